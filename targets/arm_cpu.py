"""The arm_cpu target: an aarch64 build (Cortex-A76 class: NEON + dotprod), cross-compiled
and exported as a shared library, run here under ``qemu-aarch64`` by the project's own
runner (targets/arm/runner.cc, built by scripts/setup-arm.sh), so that every result of the
target comes from executing aarch64 code.

    rt = compile_arm(qm.program, example_inputs)     # lower + cross-build + export
    outs = rt.run(x)                                # numpy arrays, computed under qemu
    rt.count(x)                                     # executed instructions of the call, by class

Status (issue 6): the build uses the generic lowering (exact, no sdot schedules yet).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from qcompiler.errors import QCompilerError

from .cpu_schedule import cpu_pipeline
from .host import _out_spec, function_input_types, input_array, output_structure
from .lower import lower

__all__ = ["ArmVariant", "ARM_VARIANTS", "arm_target", "compile_arm", "build_arm", "ArmRuntime", "ArmToolsError", "tools_dir"]


class ArmToolsError(QCompilerError):
    """The tools the arm_cpu target runs with (qemu-aarch64, the cross compiler, the
    runner) are missing or failed."""


@dataclass(frozen=True)
class ArmVariant:
    """An aarch64 CPU as data: LLVM's target attributes and the qemu CPU that runs it."""

    name: str
    mcpu: str
    mattr: tuple[str, ...]
    qemu_cpu: str


ARM_VARIANTS: dict[str, ArmVariant] = {
    "arm_cpu": ArmVariant("arm_cpu", "cortex-a76", ("+neon", "+dotprod"), "cortex-a76"),
}

SYSROOT = "/usr/aarch64-linux-gnu"
CROSS_CXX = "aarch64-linux-gnu-g++"
_DTYPES = {(0, 8): "int8", (0, 16): "int16", (0, 32): "int32", (0, 64): "int64", (1, 8): "uint8", (1, 16): "uint16",
           (2, 32): "float32", (2, 64): "float64"}  # DLPack (type code, bits) -> numpy


def arm_target(variant: str = "arm_cpu") -> tvm.target.Target:
    v = ARM_VARIANTS[variant]
    return tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": v.mcpu, "mattr": list(v.mattr)})


def tools_dir() -> Path:
    """Where scripts/setup-arm.sh put the runner, the plugin and the aarch64 runtime
    (QCOMPILER_ARM_TOOLS overrides)."""
    env = os.environ.get("QCOMPILER_ARM_TOOLS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "build" / "arm"


def _require_tools() -> Path:
    tools = tools_dir()
    missing = [name for name in ("runner", "libtvm_runtime.so", "libtvm_ffi.so") if not (tools / name).exists()]
    for program in ("qemu-aarch64", CROSS_CXX):
        if shutil.which(program) is None:
            missing.append(program)
    if missing:
        raise ArmToolsError(f"the arm_cpu target needs {', '.join(missing)} (looked in {tools} and on PATH): install the "
                            f"Debian packages qemu-user and g++-aarch64-linux-gnu, then run scripts/setup-arm.sh")
    return tools


class ArmRuntime:
    """A program built for aarch64, run under qemu-aarch64 by the runner. ``run`` takes
    numpy arrays / torch tensors and returns the output leaves as numpy arrays; calling it
    returns torch tensors in the program's output structure (given ``out_spec``)."""

    def __init__(self, library: Path, input_types: list[tuple[tuple[int, ...], str]], variant: ArmVariant,
                 build_seconds: float = 0.0, out_spec: Any = None):
        self.library = library
        self.input_types = input_types
        self.variant = variant
        self.build_seconds = build_seconds
        self.out_spec = out_spec
        self.threads = 1

    def _command(self, files: list[Path], prefix: Path, plugin: Optional[Path] = None) -> list[str]:
        tools = _require_tools()
        cmd = ["qemu-aarch64", "-L", SYSROOT, "-cpu", self.variant.qemu_cpu]
        if plugin is not None:
            cmd += ["-plugin", str(plugin), "-d", "plugin"]
        cmd += [str(tools / "runner"), str(self.library)]
        for path, (shape, dtype) in zip(files, self.input_types):
            cmd += [str(path), dtype, ",".join(map(str, shape))]
        return cmd + ["--", str(prefix)]

    def _execute(self, inputs: tuple, plugin: Optional[Path] = None) -> tuple[list[np.ndarray], str]:
        if len(inputs) != len(self.input_types):
            raise QCompilerError(f"the program takes {len(self.input_types)} input(s), got {len(inputs)}")
        with tempfile.TemporaryDirectory(prefix="qcompiler-arm-") as tmp:
            files = []
            for i, (value, (shape, dtype)) in enumerate(zip(inputs, self.input_types)):
                path = Path(tmp) / f"in{i}.bin"
                input_array(i, value, shape, dtype).tofile(path)
                files.append(path)
            prefix = Path(tmp) / "out"
            proc = subprocess.run(self._command(files, prefix, plugin), capture_output=True, text=True)
            if proc.returncode != 0:
                signal = f" (signal {-proc.returncode})" if proc.returncode < 0 else ""
                raise ArmToolsError(f"the aarch64 run failed with exit code {proc.returncode}{signal} on qemu "
                                    f"-cpu {self.variant.qemu_cpu}:\n{proc.stderr.strip()[-2000:]}")
            outputs = []
            for k, line in enumerate(l for l in proc.stdout.splitlines() if l.startswith("out")):
                code, bits, *shape = (int(v) for v in re.findall(r"-?\d+", line.split(" ", 1)[1]))
                dtype = _DTYPES[(code, bits)]
                outputs.append(np.fromfile(f"{prefix}{k}.bin", dtype=dtype).reshape(shape))
            return outputs, proc.stderr

    def run(self, *inputs: Any) -> list[np.ndarray]:
        return self._execute(inputs)[0]

    def __call__(self, *inputs: Any) -> Any:
        return output_structure(self.run(*inputs), self.out_spec)

    def count(self, *inputs: Any) -> dict[str, int]:
        """Instructions executed by the call (between the runner's markers), by class:
        total, sdot, smmla, simd, loadstore, scalar. Exactly reproducible."""
        plugin = _require_tools() / "libcount.so"
        if not plugin.exists():
            raise ArmToolsError(f"{plugin} is missing: run scripts/setup-arm.sh")
        _, log = self._execute(inputs, plugin)
        line = next((l for l in log.splitlines() if l.startswith("qcompiler-count")), None)
        if line is None:
            raise ArmToolsError(f"the counting plugin printed nothing:\n{log[-2000:]}")
        counts = dict(item.split("=") for item in line.split()[1:])
        if counts.get("markers") != "2":
            raise ArmToolsError(f"the counting plugin saw {counts.get('markers')} markers, not 2: {line}")
        return {k: int(v) for k, v in counts.items() if k != "markers"}

    def export_library(self, path: str) -> None:
        shutil.copyfile(self.library, path)

    def __repr__(self) -> str:
        return f"ArmRuntime({self.variant.name}, {len(self.input_types)} input(s), built in {self.build_seconds:.1f} s)"


def compile_arm(program: fx.GraphModule, example_inputs: Any, variant: str = "arm_cpu",
                threads: Optional[int] = None) -> ArmRuntime:
    """Lower ``program``, build it for the aarch64 ``variant`` and export the library
    (cross-compiled); the returned runtime runs it under qemu. ``threads`` is accepted for
    the target API; runs are single-threaded."""
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    start = time.perf_counter()
    runtime = build_arm(lower(program, example_inputs), variant)
    runtime.out_spec = _out_spec(program)
    runtime.build_seconds = time.perf_counter() - start
    return runtime


def build_arm(mod: tvm.IRModule, variant: str = "arm_cpu") -> ArmRuntime:
    """Build a Relax module (function "main") for the aarch64 ``variant`` with the CPU
    pipeline, export it with the cross compiler and return its runtime."""
    from tvm.support import cc

    _require_tools()
    start = time.perf_counter()
    mod = relax.transform.DeadCodeElimination()(mod)
    target = arm_target(variant)
    executable = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target))
    folder = Path(tempfile.mkdtemp(prefix="qcompiler-arm-lib-"))
    library = folder / "model.so"
    executable.export_library(str(library), fcompile=cc.cross_compiler(CROSS_CXX))
    runtime = ArmRuntime(library, function_input_types(mod["main"]), ARM_VARIANTS[variant], time.perf_counter() - start)
    weakref.finalize(runtime, shutil.rmtree, folder, True)  # the library lives as long as its runtime
    return runtime
