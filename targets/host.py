"""The host target (this x86 machine): a TVM target as data, a build with the default Relax
pipeline (no schedules yet: correctness first), and a thin runtime.

    rt = compile_host(qm.program, example_inputs)      # lower + build
    outs = rt.run(x)                                  # list of numpy arrays (the output leaves)
    y = rt(x)                                         # torch tensors, in the program's output structure

Equal bit for bit to ``qm.interpret(x)`` (tests/test_lower_host.py).
"""
from __future__ import annotations

import time
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from qcompiler.errors import QCompilerError

from .lower import LOWERINGS, LowerContext, lower

__all__ = ["host_target_spec", "host_target", "build_host", "HostRuntime", "compile_host", "BuildError"]


class BuildError(QCompilerError):
    """TVM failed to build a lowered program (the TVM error is chained beneath)."""


@lru_cache(maxsize=None)
def host_target_spec() -> dict:
    """The host target as a JSON dict: LLVM for the CPU LLVM detects (e.g. "znver3"; not
    "native", which TVM 0.27 rejects), on the default triple."""
    from tvm.target import codegen

    spec: dict[str, Any] = {"kind": "llvm"}
    cpu = str(codegen.llvm_get_system_cpu())
    if cpu and cpu != "generic" and codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
        spec["mcpu"] = cpu
    return spec


def host_target() -> tvm.target.Target:
    return tvm.target.Target(dict(host_target_spec()))


def build_host(mod: tvm.IRModule, target: Optional[tvm.target.Target] = None) -> "HostRuntime":
    """Build a lowered IRModule with ``tvm.compile`` (default Relax pipeline) for the host and
    load it in a Relax VirtualMachine."""
    target = target or host_target()
    start = time.perf_counter()
    try:
        executable = tvm.compile(mod, target)
    except Exception as exc:
        raise BuildError(f"TVM failed to build the lowered program for {target}: {type(exc).__name__}: {exc}") from exc
    return HostRuntime(executable, mod, build_seconds=time.perf_counter() - start)


class HostRuntime:
    """A built program on the host CPU. ``run(*inputs)`` takes numpy arrays or torch
    tensors (shapes as lowered; floats are cast to the input's dtype) and returns the output
    leaves as numpy arrays; calling it returns torch tensors in the program's output
    structure (given ``out_spec``)."""

    def __init__(self, executable: relax.VMExecutable, mod: tvm.IRModule, build_seconds: float = 0.0,
                 out_spec: Any = None, function: str = "main", loaded: Any = None):
        """``loaded``: the executable's module, already loaded (``executable.jit()``), to
        share one load between runtimes of several functions of one build."""
        self.executable = executable
        self.mod = mod
        self.build_seconds = build_seconds
        self.out_spec = out_spec
        self.function = function
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(loaded if loaded is not None else executable.jit(), self.device)
        self.input_types = [(tuple(int(s) for s in p.ty.shape), str(p.ty.dtype.dtype)) for p in mod[function].params]

    def _input(self, i: int, value: Any) -> tvm.runtime.Tensor:
        shape, dtype = self.input_types[i]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        if tuple(value.shape) != shape:
            raise QCompilerError(f"input {i} has shape {tuple(value.shape)}, but the program was built for {shape} "
                                 f"(static shapes: lower and build again with an example input of this shape)")
        if value.dtype != np.dtype(dtype):
            if np.issubdtype(value.dtype, np.floating) and np.issubdtype(np.dtype(dtype), np.floating):
                value = value.astype(dtype)
            else:
                raise QCompilerError(f"input {i} has dtype {value.dtype}, but the program was built for {dtype}")
        return tvm.runtime.tensor(np.ascontiguousarray(value), self.device)

    def run(self, *inputs: Any) -> list[np.ndarray]:
        if len(inputs) != len(self.input_types):
            raise QCompilerError(f"the program takes {len(self.input_types)} input(s), got {len(inputs)}")
        out = self.vm[self.function](*[self._input(i, v) for i, v in enumerate(inputs)])
        return [o.numpy() for o in out]

    def __call__(self, *inputs: Any) -> Any:
        leaves = [torch.from_numpy(a) for a in self.run(*inputs)]
        if self.out_spec is None:
            return tuple(leaves)
        from torch.utils._pytree import tree_unflatten

        return tree_unflatten(leaves, self.out_spec)

    def export_library(self, path: str) -> None:
        """Write the built program as a shared library (load it with
        ``tvm.runtime.load_module`` and run it with ``relax.VirtualMachine``)."""
        self.executable.export_library(path)

    def profile(self, *inputs: Any) -> list[tuple[str, float]]:
        """One run, timing every kernel call: [(kernel name, seconds)] in call order (VM
        builtins such as allocation are left out)."""
        import tvm_ffi

        calls: list[tuple[str, float]] = []
        starts: list[float] = []

        def instrument(func, name, before_run, ret_value, *args):
            if before_run:
                starts.append(time.perf_counter())
            else:
                calls.append((str(name), time.perf_counter() - starts.pop()))
            return 0

        args = [self._input(i, v) for i, v in enumerate(inputs)]
        self.vm.set_instrument(tvm_ffi.convert(instrument))
        try:
            self.vm[self.function](*args)
        finally:
            self.vm.set_instrument(None)
        return [(name, seconds) for name, seconds in calls if not name.startswith("vm.")]

    def __repr__(self) -> str:
        return f"HostRuntime({len(self.input_types)} input(s), built in {self.build_seconds:.1f} s)"


def _out_spec(program: fx.GraphModule) -> Any:
    """The program's output structure (as qcompiler.interpreter restores it)."""
    from torch.utils._pytree import tree_flatten

    info = getattr(program.graph._codegen, "pytree_info", None)
    if info is not None and info.out_spec is not None:
        return info.out_spec
    output = next(n for n in program.graph.nodes if n.op == "output")
    return tree_flatten(output.args[0])[1]


# ---------------------------------------------------------------- scheduled kernels


def _scheduled(kernel: str, generic: str):
    """A lowering that emits our exact AVX2 kernel (targets/x86_int8.py) for the op, and the
    generic lowering where the kernel cannot guarantee exactness (ExactnessError) or the
    CPU has no AVX2."""
    def lowering(ctx: LowerContext, node: fx.Node, args: tuple, kwargs: dict):
        from . import x86_int8

        if not host_has_avx2():
            return LOWERINGS[generic](ctx, node, args, kwargs)
        x = ctx.expr(args[0])
        params = [np.asarray(a) if isinstance(a, np.ndarray) else a for a in args[1:-1]]
        try:
            func, consts = getattr(x86_int8, kernel)(ctx.shape(x), ctx.dtype(x), *params, out_dtype=_dtype_name(args[-1]),
                                                     target=host_target())
        except x86_int8.ExactnessError:
            return LOWERINGS[generic](ctx, node, args, kwargs)
        return x86_int8.emit_call_tir(ctx.bb, func, consts, x, name_hint=f"{generic}_{node.name}")
    return lowering


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


@lru_cache(maxsize=None)
def host_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return False


# The host's own lowerings: our scheduled kernels for the ops that carry the MACs.
HOST_LOWERINGS = {
    "conv2d": _scheduled("conv2d_requant_primfunc", "conv2d"),
    "linear": _scheduled("linear_requant_primfunc", "linear"),
}


def compile_host(program: fx.GraphModule, example_inputs: Any, target: Optional[tvm.target.Target] = None,
                 scheduled: bool = True) -> HostRuntime:
    """lower + build_host; the runtime's ``__call__`` returns the program's output structure.
    ``scheduled=False`` builds TVM's default lowering only (no kernels of ours)."""
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    runtime = build_host(lower(program, example_inputs, target_lowerings=HOST_LOWERINGS if scheduled else None), target)
    runtime.out_spec = _out_spec(program)
    return runtime
