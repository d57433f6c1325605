"""The host target (this x86 machine): a TVM target as data, a build with the default Relax
pipeline (no schedules yet: correctness first), and a thin runtime.

    rt = compile_host(qm.program, example_inputs)      # lower + build
    outs = rt.run(x)                                  # list of numpy arrays (the output leaves)
    y = rt(x)                                         # torch tensors, in the program's output structure

Equal bit for bit to ``qm.interpret(x)`` (tests/test_lower_host.py).
"""
from __future__ import annotations

import os
import shutil
import time
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from qcompiler.errors import QCompilerError
from qcompiler.progress import stage

from .cpu_schedule import cpu_pipeline
from .kernel_lowering import KernelChoice, generic_lowering, scheduled_lowering
from .kernels import x86 as x86_kernels
from .lower import lower
from .runtime_common import function_input_types, input_array, output_structure, program_out_spec

__all__ = ["host_target_spec", "host_target", "build_host", "HostRuntime", "compile_host", "BuildError", "use_threads",
           "available_cpus", "load_host", "host_lowerings", "host_has_avx2", "scheduled_lowering", "KernelChoice",
           "function_input_types", "input_array", "output_structure"]


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
        # node name -> KernelChoice for each conv2d / linear node (set by compile_host; empty
        # for a runtime built or loaded otherwise)
        self.kernel_choices: dict[str, KernelChoice] = {}

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


_out_spec = program_out_spec  # the name the targets used before runtime_common


@lru_cache(maxsize=None)
def host_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return False


NO_AVX2 = "this CPU has no AVX2"


def _avx2_missing() -> Optional[str]:
    return None if host_has_avx2() else NO_AVX2


def host_lowerings(threads: Optional[int] = None, choices: Optional[dict] = None) -> dict:
    """The host's own lowerings: our scheduled kernels (``targets/kernels/x86.py``) for the
    ops that carry the MACs, tiled for ``threads`` runtime threads; the generic lowering
    where a kernel cannot guarantee exactness or the CPU has no AVX2. Each node's
    ``KernelChoice`` goes into ``choices`` (a dict by node name) when given."""
    return {
        op: scheduled_lowering(x86_kernels, f"{op}_requant_primfunc", op, host_target, {"threads": threads},
                               _avx2_missing, choices)
        for op in ("conv2d", "linear")
    }


HOST_LOWERINGS = host_lowerings()


def compile_host(program: fx.GraphModule, example_inputs: Any, target: Optional[tvm.target.Target] = None,
                 scheduled: bool = True, threads: Optional[int] = None) -> HostRuntime:
    """lower + build_host; the runtime's ``__call__`` returns the program's output structure,
    its ``kernel_choices`` which kernel each conv2d / linear node got (and why not ours).
    ``scheduled=False`` is TVM's default build of the generic lowering (no kernels or
    schedules of ours: for comparison). ``threads``: the thread count the kernels are tiled
    for (default TVM_NUM_THREADS, else the CPU count); TVM's runtime runs them on its own
    thread pool (TVM_NUM_THREADS, or ``runtime.config_threadpool``)."""
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    stage("lowering to Relax")
    choices: dict[str, KernelChoice] = {}
    lowerings = host_lowerings(threads, choices) if scheduled else {
        op: generic_lowering(op, "scheduled=False: TVM's default build", choices) for op in ("conv2d", "linear")}
    mod = lower(program, example_inputs, target_lowerings=lowerings)
    stage("building with TVM (LLVM)")
    runtime = build_host(mod, target, scheduled=scheduled, threads=threads)
    runtime.out_spec = program_out_spec(program)
    runtime.kernel_choices = choices
    return runtime


def load_host(library: Any, input_types: list, out_spec: Any = None, threads: Optional[int] = None) -> HostRuntime:
    """The runtime of a host library exported by ``CompiledModel.export`` (``model.so``):
    loaded with ``tvm.runtime.load_module`` into a Relax VirtualMachine; ``input_types``:
    (shape, dtype) per input, from the export's manifest."""
    try:
        loaded = tvm.runtime.load_module(str(library))
    except Exception as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise QCompilerError(f"cannot load {library} on this machine: {type(exc).__name__}: {first}. The library is "
                             f"damaged or was not built for this machine's host target: export it again here with "
                             f"cm.export(dir)") from exc
    return HostRuntime(None, None, out_spec=out_spec, loaded=loaded, threads=threads,
                       input_types=[(tuple(shape), dtype) for shape, dtype in input_types], library=str(library))
