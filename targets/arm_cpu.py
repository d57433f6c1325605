"""The arm_cpu target: an aarch64 build (Cortex-A76 class: NEON + dotprod), cross-compiled
and exported as a shared library, run here under ``qemu-aarch64`` by the project's own
runner (targets/arm/runner.cc, built by scripts/setup-arm.sh), so that every result of the
target comes from executing aarch64 code.

    rt = compile_arm(qm.program, example_inputs)     # lower + cross-build + export
    outs = rt.run(x)                                # numpy arrays, computed under qemu
    rt.count(x)                                     # executed instructions of the call, by class

Variants (ARM_VARIANTS, targets "arm_cpu" and "arm_cpu_a53"): Cortex-A76 with our sdot kernels
(targets/kernels/arm.py) and Cortex-A53 (no dotprod) with TVM's generic kernels. A variant that asks
for a feature its CPU lacks is refused when it is made (ArmTargetError), never a SIGILL later.
"""
from __future__ import annotations

import bisect
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
from qcompiler.progress import stage

from .cpu_schedule import cpu_pipeline
from .kernel_lowering import KernelChoice, generic_lowering, scheduled_lowering
from .kernels import arm as arm_kernels
from .lower import lower
from .runtime_common import function_input_types, input_array, output_structure, program_out_spec

__all__ = ["ArmVariant", "ARM_VARIANTS", "CPU_FEATURES", "arm_target", "get_variant", "arm_lowerings", "compile_arm",
           "build_arm", "ArmRuntime", "run_calls", "parse_counts", "ArmToolsError", "ArmTargetError", "tools_dir"]


class ArmToolsError(QCompilerError):
    """The tools the arm_cpu target runs with (qemu-aarch64, the cross compiler, the
    runner) are missing or failed."""


class ArmTargetError(QCompilerError):
    """An arm variant that cannot be built as asked (e.g. sdot for a CPU without dotprod)."""


# What each CPU implements, of the features our kernels use (Arm's technical reference
# manuals): a variant may not ask LLVM for more than its CPU has, or the library would stop
# with SIGILL on the device.
CPU_FEATURES: dict[str, frozenset] = {
    "cortex-a53": frozenset({"neon"}),
    "cortex-a55": frozenset({"neon", "dotprod"}),
    "cortex-a76": frozenset({"neon", "dotprod"}),
    "cortex-a78": frozenset({"neon", "dotprod"}),
    "cortex-x2": frozenset({"neon", "dotprod", "i8mm"}),
    "neoverse-n2": frozenset({"neon", "dotprod", "i8mm"}),
}


# What each kind of kernels needs: "sdot" and "smmla" are targets/kernels/arm.py's (smmla in
# the GEMMs, sdot elsewhere), "generic" is TVM's legalized ops.
KERNEL_FEATURES: dict[str, frozenset] = {
    "generic": frozenset({"neon"}),
    "sdot": frozenset({"neon", "dotprod"}),
    "smmla": frozenset({"neon", "dotprod", "i8mm"}),
}


@dataclass(frozen=True)
class ArmVariant:
    """An aarch64 CPU as data: LLVM's CPU and target attributes, the qemu CPU that runs it
    here, and the kernels it gets (KERNEL_FEATURES: "sdot" and "smmla": targets/kernels/arm.py;
    "generic": TVM's legalized ops, NEON only). Checked on construction: the attributes must be features of the CPU,
    and sdot kernels need dotprod; otherwise an ArmTargetError says which variant to use."""

    name: str
    mcpu: str
    mattr: tuple[str, ...]
    qemu_cpu: str
    kernels: str = "sdot"
    description: str = ""

    def __post_init__(self) -> None:
        features = {a.lstrip("+") for a in self.mattr if a.startswith("+")}
        known = CPU_FEATURES.get(self.mcpu)
        problems = []
        if known is not None and not features <= known:
            problems.append(f"{self.mcpu} has no {', '.join(sorted(features - known))} (it has {', '.join(sorted(known))})")
        if self.kernels not in KERNEL_FEATURES:
            problems.append(f"kernels={self.kernels!r}: use one of {', '.join(KERNEL_FEATURES)}")
        elif not KERNEL_FEATURES[self.kernels] <= features:
            problems.append(f"the {self.kernels} kernels need "
                            f"{', '.join('+' + f for f in sorted(KERNEL_FEATURES[self.kernels] - features))}")
        if problems:
            usable = [v.name for v in ARM_VARIANTS.values() if v.mcpu == self.mcpu] if "ARM_VARIANTS" in globals() else []
            hint = f"use the variant {usable[0]!r}" if usable else "use kernels='generic' with only the CPU's features"
            raise ArmTargetError(f"arm variant {self.name!r}: {'; '.join(problems)}: a library built so would stop with "
                                 f"SIGILL on that CPU; {hint}")

    @property
    def features(self) -> frozenset:
        return frozenset(a.lstrip("+") for a in self.mattr if a.startswith("+"))


ARM_VARIANTS: dict[str, ArmVariant] = {v.name: v for v in (
    ArmVariant("arm_cpu", "cortex-a76", ("+neon", "+dotprod"), "cortex-a76", "sdot",
               "aarch64 Cortex-A76 class (NEON + dotprod): our sdot kernels"),
    ArmVariant("arm_cpu_a53", "cortex-a53", ("+neon",), "cortex-a53", "generic",
               "aarch64 Cortex-A53 class (NEON, no dotprod): TVM's generic kernels, no sdot"),
    # qemu has no Neoverse-N2 / Cortex-X2 model; its "max" CPU implements i8mm (Armv8.6).
    ArmVariant("arm_cpu_i8mm", "neoverse-n2", ("+neon", "+dotprod", "+i8mm"), "max", "smmla",
               "aarch64 with i8mm (Neoverse-N2, Cortex-X2 class): smmla GEMMs, sdot depthwise and dense"),
)}


SYSROOT = "/usr/aarch64-linux-gnu"
CROSS_CXX = "aarch64-linux-gnu-g++"
_DTYPES = {(0, 8): "int8", (0, 16): "int16", (0, 32): "int32", (0, 64): "int64", (1, 8): "uint8", (1, 16): "uint16",
           (2, 32): "float32", (2, 64): "float64"}  # DLPack (type code, bits) -> numpy


def arm_target(variant: str = "arm_cpu") -> tvm.target.Target:
    v = variant if isinstance(variant, ArmVariant) else get_variant(variant)
    return tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": v.mcpu, "mattr": list(v.mattr)})


def get_variant(name: str) -> ArmVariant:
    if name not in ARM_VARIANTS:
        raise ArmTargetError(f"unknown arm variant {name!r}; known: {', '.join(ARM_VARIANTS)}")
    return ARM_VARIANTS[name]


def arm_lowerings(variant: str = "arm_cpu", choices: Optional[dict] = None) -> dict:
    """The variant's own lowerings: our sdot kernels (``targets/kernels/arm.py``) for conv2d
    and linear (the generic lowering where a kernel cannot guarantee exactness); for a
    generic variant, the generic lowerings. Each node's ``KernelChoice`` goes into
    ``choices`` (a dict by node name) when given."""
    v = get_variant(variant)
    if v.kernels == "generic":
        reason = f"the {v.name} variant ({v.mcpu}) has no dotprod: TVM's generic kernels"
        return {op: generic_lowering(op, reason, choices) for op in ("conv2d", "linear")}
    return {op: scheduled_lowering(arm_kernels, f"{op}_requant_primfunc", op, lambda: arm_target(variant),
                                   {"instruction": v.kernels}, choices=choices)
            for op in ("conv2d", "linear")}


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
    returns torch tensors in the program's output structure (given ``out_spec``).
    ``function``: the library's function it calls ("main"; ``for_function`` gives the
    runtime of another function of the same library, ``run_calls`` runs several calls in
    one qemu process)."""

    def __init__(self, library: Path, input_types: list[tuple[tuple[int, ...], str]], variant: ArmVariant,
                 build_seconds: float = 0.0, out_spec: Any = None, function: str = "main",
                 mod: Optional[tvm.IRModule] = None):
        self.library = library
        self.input_types = input_types
        self.variant = variant
        self.build_seconds = build_seconds
        self.out_spec = out_spec
        self.function = function
        self.mod = mod
        self.threads = 1
        # node name -> KernelChoice for each conv2d / linear node (set by compile_arm)
        self.kernel_choices: dict[str, KernelChoice] = {}

    def for_function(self, name: str, out_spec: Any = None) -> "ArmRuntime":
        """The runtime of the library's function ``name`` (built by the same ``build_arm``)."""
        if self.mod is None or name not in [gv.name_hint for gv in self.mod.functions]:
            raise QCompilerError(f"the library has no Relax function {name!r}")
        other = ArmRuntime(self.library, function_input_types(self.mod[name]), self.variant, self.build_seconds,
                           out_spec, name, self.mod)
        other._keep = self  # the library's folder lives as long as the runtime that built it
        return other

    def _execute(self, inputs: tuple, plugin: Optional[str] = None, env: Optional[dict] = None) -> tuple[list[np.ndarray], str]:
        outputs, log = run_calls([(self, inputs)], plugin, env)
        return outputs[0], log

    def run(self, *inputs: Any) -> list[np.ndarray]:
        return self._execute(inputs)[0]

    def __call__(self, *inputs: Any) -> Any:
        return output_structure(self.run(*inputs), self.out_spec)

    def count(self, *inputs: Any) -> dict[str, int]:
        """Instructions executed by the call (between the runner's markers), by class:
        total, sdot, smmla, simd, loadstore, scalar. Exactly reproducible."""
        _, log = self._execute(inputs, str(_plugin()))
        return parse_counts(log)

    def count_by_function(self, *inputs: Any) -> list[tuple[str, dict[str, int]]]:
        """The call's instructions per function, most first: (name, counts by class as in
        ``count``). Functions of the library by their symbol (kernels: the Relax names,
        e.g. "conv2d_conv2d_7"; "__tvm_ffi_" wrappers separately); code of other files
        (the TVM runtime, libc) by file."""
        with tempfile.TemporaryDirectory(prefix="qcompiler-arm-prof-") as tmp:
            path = Path(tmp) / "profile.txt"
            _, log = self._execute(inputs, f"{_plugin()},profile={path}", env={"QCOMPILER_MAPS": "1"})
            parse_counts(log)
            blocks = [line.split() for line in path.read_text().splitlines()]
        return profile_by_function(blocks, log, self.library)

    def export_library(self, path: str) -> None:
        shutil.copyfile(self.library, path)

    def __repr__(self) -> str:
        return f"ArmRuntime({self.variant.name}, {len(self.input_types)} input(s), built in {self.build_seconds:.1f} s)"


def run_calls(calls: list[tuple[ArmRuntime, tuple]], plugin: Optional[str] = None,
              env: Optional[dict] = None) -> tuple[list[list[np.ndarray]], str]:
    """Run several calls (runtime, inputs) of one library in one qemu process (loading the
    TVM runtime under qemu costs more than a small model's call); the outputs of each call
    and qemu's stderr (the plugin's counts, one pair of markers per call)."""
    if not calls:
        return [], ""
    first = calls[0][0]
    if any(rt.library != first.library or rt.variant != first.variant for rt, _ in calls):
        raise QCompilerError("run_calls runs calls of one library and variant only")
    tools = _require_tools()
    with tempfile.TemporaryDirectory(prefix="qcompiler-arm-") as tmp:
        lines = []
        for j, (runtime, inputs) in enumerate(calls):
            if len(inputs) != len(runtime.input_types):
                raise QCompilerError(f"{runtime.function} takes {len(runtime.input_types)} input(s), got {len(inputs)}")
            words = [runtime.function, f"{tmp}/c{j}_out"]
            for i, (value, (shape, dtype)) in enumerate(zip(inputs, runtime.input_types)):
                path = f"{tmp}/c{j}_in{i}.bin"
                input_array(i, value, shape, dtype).tofile(path)
                words += [path, dtype, ",".join(map(str, shape)) or "1"]
            lines.append(" ".join(words))
        (Path(tmp) / "calls.txt").write_text("\n".join(lines) + "\n")
        cmd = ["qemu-aarch64", "-L", SYSROOT, "-cpu", first.variant.qemu_cpu]
        if plugin is not None:
            cmd += ["-plugin", plugin, "-d", "plugin"]
        cmd += [str(tools / "runner"), str(first.library), "--calls", f"{tmp}/calls.txt"]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "TVM_NUM_THREADS": str(first.threads), **(env or {})})
        if proc.returncode != 0:
            signal = f" (signal {-proc.returncode})" if proc.returncode < 0 else ""
            hint = (f": an illegal instruction, the library uses a feature ({', '.join(sorted(first.variant.features))}) "
                    f"that qemu's {first.variant.qemu_cpu} lacks" if proc.returncode == -4 else "")
            raise ArmToolsError(f"the aarch64 run failed with exit code {proc.returncode}{signal} on qemu "
                                f"-cpu {first.variant.qemu_cpu}{hint}:\n{proc.stderr.strip()[-2000:]}")
        results: list[list[np.ndarray]] = []
        for line in proc.stdout.splitlines():
            if line.startswith("call "):
                results.append([])
            elif line.startswith("out") and results:
                j = len(results) - 1
                k = len(results[j])
                code, bits, *shape = (int(v) for v in re.findall(r"-?\d+", line.split(" ", 1)[1]))
                results[j].append(np.fromfile(f"{tmp}/c{j}_out{k}.bin", dtype=_DTYPES[(code, bits)]).reshape(shape))
        if len(results) != len(calls):
            raise ArmToolsError(f"the runner answered {len(results)} of {len(calls)} calls:\n{proc.stdout[-2000:]}")
        return results, proc.stderr


def _plugin() -> Path:
    plugin = _require_tools() / "libcount.so"
    if not plugin.exists():
        raise ArmToolsError(f"{plugin} is missing: run scripts/setup-arm.sh")
    return plugin


def parse_counts(log: str, error: type[Exception] = ArmToolsError) -> dict[str, int]:
    """The counts of the plugin's "qcompiler-count" line in qemu's ``log`` (one pair of
    markers: one counted call); ``error`` if the line is missing or the markers are not 2."""
    line = next((l for l in log.splitlines() if l.startswith("qcompiler-count")), None)
    if line is None:
        raise error(f"the counting plugin printed nothing:\n{log[-2000:]}")
    counts = dict(item.split("=") for item in line.split()[1:])
    if counts.get("markers") != "2":
        raise error(f"the counting plugin saw {counts.get('markers')} markers, not 2: {line}")
    return {k: int(v) for k, v in counts.items() if k != "markers"}


CLASSES = ("sdot", "smmla", "simd", "loadstore", "scalar")


def profile_by_function(blocks: list[list[str]], log: str, library: Path) -> list[tuple[str, dict[str, int]]]:
    """Sum the plugin's per-block counts ("vaddr executions sdot smmla simd loadstore
    scalar") by function: addresses in ``library`` go to its symbols (``nm``), others to
    the file mapped there (the runner's "qcompiler-map" lines)."""
    maps = []
    for line in log.splitlines():
        if line.startswith("qcompiler-map "):
            fields = line.split()
            if len(fields) >= 7:
                lo, hi = (int(v, 16) for v in fields[1].split("-"))
                maps.append((lo, hi, int(fields[3], 16), fields[6]))
    listing = subprocess.run(["aarch64-linux-gnu-nm", "-n", "--defined-only", str(library)], capture_output=True,
                             text=True).stdout
    symbols = [(int(a, 16), name) for a, kind, name in (l.split()[:3] for l in listing.splitlines() if len(l.split()) >= 3)
               if kind.lower() == "t"]
    addresses = [a for a, _ in symbols]
    totals: dict[str, dict[str, int]] = {}
    for vaddr, _, *by_class in blocks:
        v = int(vaddr, 16)
        where = next(((lo, off, path) for lo, hi, off, path in maps if lo <= v < hi), None)
        if where is None:
            name = "?"
        elif Path(where[2]).resolve() == Path(library).resolve():
            k = bisect.bisect_right(addresses, v - where[0] + where[1]) - 1
            name = symbols[k][1] if k >= 0 else "?"
        else:
            name = Path(where[2]).name
        row = totals.setdefault(name, dict.fromkeys(("total",) + CLASSES, 0))
        for cls, n in zip(CLASSES, by_class):
            row[cls] += int(n)
            row["total"] += int(n)
    return sorted(totals.items(), key=lambda item: -item[1]["total"])


def compile_arm(program: fx.GraphModule, example_inputs: Any, variant: str = "arm_cpu",
                threads: Optional[int] = None) -> ArmRuntime:
    """Lower ``program``, build it for the aarch64 ``variant`` and export the library
    (cross-compiled); the returned runtime runs it under qemu, and its ``kernel_choices``
    say which kernel each conv2d / linear node got. ``threads`` is accepted for
    the target API; runs are single-threaded."""
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    start = time.perf_counter()
    stage("lowering to Relax")
    choices: dict[str, KernelChoice] = {}
    mod = lower(program, example_inputs, target_lowerings=arm_lowerings(variant, choices))
    stage("building with TVM (LLVM, aarch64) and the cross compiler")
    runtime = build_arm(mod, variant)
    runtime.out_spec = program_out_spec(program)
    runtime.kernel_choices = choices
    runtime.build_seconds = time.perf_counter() - start
    return runtime


def load_arm(library: Any, input_types: list, out_spec: Any = None, variant: str = "arm_cpu") -> ArmRuntime:
    """The runtime of an aarch64 library exported by ``CompiledModel.export``: run under
    qemu-aarch64 for ``variant``'s CPU by the runner (scripts/setup-arm.sh); ``input_types``:
    (shape, dtype) per input, from the export's manifest."""
    _require_tools()
    return ArmRuntime(Path(library), [(tuple(shape), dtype) for shape, dtype in input_types], get_variant(variant),
                      out_spec=out_spec)


def build_arm(mod: tvm.IRModule, variant: str = "arm_cpu", scheduled: bool = True) -> ArmRuntime:
    """Build a Relax module for the aarch64 ``variant`` (the runtime calls "main", or its
    first function; ``for_function`` the others) with the CPU
    pipeline (fusion, vectorized elementwise kernels), export it with the cross compiler
    and return its runtime. ``scheduled=False``: ``tvm.compile``'s default pipeline as it
    is (what a TVM user gets; for comparison)."""
    from tvm.support import cc

    _require_tools()
    start = time.perf_counter()
    mod = relax.transform.DeadCodeElimination()(mod)
    target = arm_target(variant)
    executable = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target) if scheduled else "default")
    folder = Path(tempfile.mkdtemp(prefix="qcompiler-arm-lib-"))
    library = folder / "model.so"
    executable.export_library(str(library), fcompile=cc.cross_compiler(CROSS_CXX))
    names = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, relax.Function)]
    entry = "main" if "main" in names else names[0]
    runtime = ArmRuntime(library, function_input_types(mod[entry]), get_variant(variant), time.perf_counter() - start,
                         function=entry, mod=mod)
    weakref.finalize(runtime, shutil.rmtree, folder, True)  # the library lives as long as its runtime
    return runtime
