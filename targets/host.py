"""The host target (this x86 machine): a TVM target as data, a build with the default Relax
pipeline (no schedules yet: correctness first), and a thin runtime.

    rt = compile_host(qm.program, example_inputs)      # lower + build
    outs = rt.run(x)                                  # list of numpy arrays (the output leaves)
    y = rt(x)                                         # torch tensors, in the program's output structure

Equal bit for bit to ``qm.interpret(x)`` (tests/test_lower_host.py).
"""
from __future__ import annotations

import importlib
import os
import shutil
import time
from functools import lru_cache
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from qcompiler.errors import QCompilerError
from qcompiler.progress import stage

from .cpu_schedule import cpu_pipeline
from .lower import LOWERINGS, LowerContext, lower

__all__ = ["host_target_spec", "host_target", "build_host", "HostRuntime", "compile_host", "BuildError", "use_threads",
           "available_cpus"]


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# TVM's runtime sizes its thread pool once, from TVM_NUM_THREADS, when it first runs a
# parallel kernel; without it, it takes half the CPUs on x86 (it assumes hyper-threading),
# one thread on these 2-core machines. Give it every CPU this process may use; each
# HostRuntime then runs on its own ``threads`` of them (``use_threads``).
os.environ.setdefault("TVM_NUM_THREADS", str(available_cpus()))

_THREADS_IN_USE: list[Optional[int]] = [None]


def use_threads(n: int) -> None:
    """Run TVM's parallel kernels on ``n`` threads from now on (at most TVM_NUM_THREADS as
    it was when the runtime first ran a parallel kernel)."""
    if _THREADS_IN_USE[0] != n:
        tvm.get_global_func("runtime.config_threadpool")(0, int(n))
        _THREADS_IN_USE[0] = n


def input_array(i: int, value: Any, shape: tuple, dtype: str) -> np.ndarray:
    """Input ``i`` (numpy array or torch tensor) as a contiguous numpy array of the built
    program's ``shape`` and ``dtype``: floats are cast to a float dtype; any other mismatch
    is an error that says what was expected."""
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
    return np.ascontiguousarray(value)


def function_input_types(func: relax.Function) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each parameter of a lowered Relax function (static shapes)."""
    return [(tuple(int(s) for s in p.ty.shape), str(p.ty.dtype.dtype)) for p in func.params]


def output_structure(arrays: list[np.ndarray], out_spec: Any) -> Any:
    """The output leaves as torch tensors, in the program's output structure (a tuple
    when ``out_spec`` is None)."""
    leaves = [torch.from_numpy(a) for a in arrays]
    if out_spec is None:
        return tuple(leaves)
    from torch.utils._pytree import tree_unflatten

    return tree_unflatten(leaves, out_spec)


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


def build_host(mod: tvm.IRModule, target: Optional[tvm.target.Target] = None, scheduled: bool = True,
               threads: Optional[int] = None) -> "HostRuntime":
    """Build a lowered IRModule with ``tvm.compile`` and Relax's CPU pipeline (legalize, fuse
    each chain of elementwise ops into one kernel, which ``tvm.compile``'s own default does
    not do on CPU) with those kernels vectorized (``cpu_schedule``), and load it in a Relax
    VirtualMachine. ``scheduled=False``: ``tvm.compile``'s default pipeline as it is (what
    a TVM user gets: no fusion, no schedules)."""
    target = target or host_target()
    start = time.perf_counter()
    try:
        mod = relax.transform.DeadCodeElimination()(mod)  # e.g. pads taken into the conv kernels
        executable = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target) if scheduled else "default")
    except Exception as exc:
        raise BuildError(f"TVM failed to build the lowered program for {target}: {type(exc).__name__}: {exc}") from exc
    return HostRuntime(executable, mod, build_seconds=time.perf_counter() - start, threads=threads)


class HostRuntime:
    """A built program on the host CPU. ``run(*inputs)`` takes numpy arrays or torch
    tensors (shapes as lowered; floats are cast to the input's dtype) and returns the output
    leaves as numpy arrays; calling it returns torch tensors in the program's output
    structure (given ``out_spec``)."""

    def __init__(self, executable: Optional[relax.VMExecutable], mod: Optional[tvm.IRModule], build_seconds: float = 0.0,
                 out_spec: Any = None, function: str = "main", loaded: Any = None, threads: Optional[int] = None,
                 input_types: Optional[list] = None, library: Optional[str] = None):
        """``loaded``: the executable's module, already loaded (``executable.jit()``, or
        ``tvm.runtime.load_module`` of an exported ``library``: then ``executable`` and
        ``mod`` are None and ``input_types`` are given), to share one load between runtimes
        of several functions of one build. ``threads``: how many threads its parallel
        kernels run on (default: TVM_NUM_THREADS, all CPUs)."""
        self.executable = executable
        self.library = library
        self.mod = mod
        self.build_seconds = build_seconds
        self.out_spec = out_spec
        self.function = function
        self.device = tvm.cpu()
        self.threads = int(threads or os.environ.get("TVM_NUM_THREADS") or available_cpus())
        self.vm = relax.VirtualMachine(loaded if loaded is not None else executable.jit(), self.device)
        self.input_types = input_types if input_types is not None else function_input_types(mod[function])

    def _input(self, i: int, value: Any) -> tvm.runtime.Tensor:
        return tvm.runtime.tensor(input_array(i, value, *self.input_types[i]), self.device)

    def run(self, *inputs: Any) -> list[np.ndarray]:
        if len(inputs) != len(self.input_types):
            raise QCompilerError(f"the program takes {len(self.input_types)} input(s), got {len(inputs)}")
        use_threads(self.threads)
        out = self.vm[self.function](*[self._input(i, v) for i, v in enumerate(inputs)])
        return [o.numpy() for o in out]

    def __call__(self, *inputs: Any) -> Any:
        return output_structure(self.run(*inputs), self.out_spec)

    def export_library(self, path: str) -> None:
        """Write the built program as a shared library (load it with
        ``tvm.runtime.load_module`` and run it with ``relax.VirtualMachine``)."""
        if self.executable is None:
            shutil.copyfile(self.library, path)
        else:
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
        use_threads(self.threads)
        self.vm.set_instrument(tvm_ffi.convert(instrument))
        try:
            self.vm[self.function](*args)
        finally:
            self.vm.set_instrument(None)
        return [(name, seconds) for name, seconds in calls if not name.startswith("vm.")]

    def __repr__(self) -> str:
        return f"HostRuntime({len(self.input_types)} input(s), {self.threads} thread(s), built in {self.build_seconds:.1f} s)"


def _out_spec(program: fx.GraphModule) -> Any:
    """The program's output structure (as qcompiler.interpreter restores it)."""
    from torch.utils._pytree import tree_flatten

    info = getattr(program.graph._codegen, "pytree_info", None)
    if info is not None and info.out_spec is not None:
        return info.out_spec
    output = next(n for n in program.graph.nodes if n.op == "output")
    return tree_flatten(output.args[0])[1]


# ---------------------------------------------------------------- scheduled kernels


def scheduled_lowering(kernels: str, kernel: str, generic: str, target: Callable[[], tvm.target.Target],
                       options: Optional[dict] = None, available: Callable[[], bool] = lambda: True):
    """A lowering that emits a kernel of ours for the op: ``kernel`` (e.g.
    "conv2d_requant_primfunc") of the module ``kernels`` (targets/x86_int8.py,
    targets/arm_int8.py: same API) built for ``target()``; and the generic lowering
    ``generic`` where the kernel cannot guarantee exactness (its ExactnessError) or
    ``available()`` is false (e.g. a host without AVX2). ``options`` go to conv kernels
    (e.g. ``threads``)."""
    def lowering(ctx: LowerContext, node: fx.Node, args: tuple, kwargs: dict):
        module = importlib.import_module(f"{__package__}.{kernels}")
        if not available():
            return LOWERINGS[generic](ctx, node, args, kwargs)
        x = ctx.expr(args[0])
        params = [np.asarray(a) if isinstance(a, np.ndarray) else a for a in args[1:-1]]
        if generic == "conv2d":
            x, params[PADDING_PARAM] = _fold_zero_point_pad(ctx, node, x, params[PADDING_PARAM], params[X_ZP_PARAM])
        extra = {k: v for k, v in (options or {}).items() if v is not None} if generic == "conv2d" else {}
        try:
            func, consts = getattr(module, kernel)(ctx.shape(x), ctx.dtype(x), *params, out_dtype=_dtype_name(args[-1]),
                                                   target=target(), **extra)
        except module.ExactnessError:
            return LOWERINGS[generic](ctx, node, args, kwargs)
        return module.emit_call_tir(ctx.bb, func, consts, x, name_hint=f"{generic}_{node.name}")
    return lowering


# positions in qcompiler.conv2d's arguments after x: (w, bias, x_zp, stride, padding, ...)
X_ZP_PARAM, PADDING_PARAM = 2, 4


def _fold_zero_point_pad(ctx: LowerContext, node: fx.Node, x: Any, padding: Any, x_zp: Any) -> tuple[Any, Any]:
    """If the conv's input is a ``constant_pad_nd`` of its spatial dims by the conv's input
    zero point (TensorFlow "same" padding, which is asymmetric for stride 2), take the pad
    into the kernel: returns (the pad's input, (top, bottom, left, right) padding). The
    kernel then pads in its own scratch copy and the padded tensor is never written (the
    pad is left dead for dead-code elimination, unless something else uses it).
    Otherwise returns (x, padding) as given."""
    source = node.args[0]
    if not (isinstance(source, fx.Node) and source.op == "call_function"
            and source.target is torch.ops.aten.constant_pad_nd.default):
        return x, padding
    pad = [int(v) for v in source.args[1]]
    value = source.args[2] if len(source.args) > 2 else source.kwargs.get("value", 0)
    inner = ctx.env.get(source.args[0])
    if len(pad) != 4 or min(pad) < 0 or not isinstance(inner, relax.Expr) or float(value) != float(int(x_zp)):
        return x, padding
    (ph, pw), (left, right, top, bottom) = [int(v) for v in padding], pad
    return inner, (ph + top, ph + bottom, pw + left, pw + right)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


@lru_cache(maxsize=None)
def host_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return False


def host_lowerings(threads: Optional[int] = None) -> dict:
    """The host's own lowerings: our scheduled kernels for the ops that carry the MACs,
    tiled for ``threads`` runtime threads."""
    return {
        op: scheduled_lowering("x86_int8", f"{op}_requant_primfunc", op, host_target, {"threads": threads}, host_has_avx2)
        for op in ("conv2d", "linear")
    }


HOST_LOWERINGS = host_lowerings()


def compile_host(program: fx.GraphModule, example_inputs: Any, target: Optional[tvm.target.Target] = None,
                 scheduled: bool = True, threads: Optional[int] = None) -> HostRuntime:
    """lower + build_host; the runtime's ``__call__`` returns the program's output structure.
    ``scheduled=False`` is TVM's default build of the generic lowering (no kernels or
    schedules of ours: for comparison). ``threads``: the thread count the kernels are tiled
    for (default TVM_NUM_THREADS, else the CPU count); TVM's runtime runs them on its own
    thread pool (TVM_NUM_THREADS, or ``runtime.config_threadpool``)."""
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    stage("lowering to Relax")
    mod = lower(program, example_inputs, target_lowerings=host_lowerings(threads) if scheduled else None)
    stage("building with TVM (LLVM)")
    runtime = build_host(mod, target, scheduled=scheduled, threads=threads)
    runtime.out_spec = _out_spec(program)
    return runtime


def load_host(library: Any, input_types: list, out_spec: Any = None, threads: Optional[int] = None) -> HostRuntime:
    """The runtime of a host library exported by ``CompiledModel.export`` (``model.so``):
    loaded with ``tvm.runtime.load_module`` into a Relax VirtualMachine; ``input_types``:
    (shape, dtype) per input, from the export's manifest."""
    try:
        loaded = tvm.runtime.load_module(str(library))
    except Exception as exc:
        raise QCompilerError(f"cannot load {library} on this machine: {type(exc).__name__}: {exc}") from exc
    return HostRuntime(None, None, out_spec=out_spec, loaded=loaded, threads=threads,
                       input_types=[(tuple(shape), dtype) for shape, dtype in input_types], library=str(library))
