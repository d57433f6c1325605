"""Targets: what qcompiler can compile an integer program for. Each is a row of data: a
name, what it is, its quantization scheme, and the function that lowers, builds and loads a
program for it (a "module:function" path, imported only when that target is used, so that
``import qcompiler`` does not load TVM).

    from qcompiler.targets import TARGETS, get_target
    get_target("host").build(program, example_inputs)   # -> a runtime: run(*arrays) -> [arrays]
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from qcompiler.errors import QCompilerError, did_you_mean
from qcompiler.scheme import QuantScheme, arm_scheme, host_scheme


class TargetError(QCompilerError):
    """An unknown target, or a target this machine cannot build or run."""


@dataclass(frozen=True)
class TargetInfo:
    """A compilation target as data.

    name: what users pass as ``target=``.
    description: one line for reports and errors.
    scheme: the QuantScheme the target executes (its default for ``qcompile``).
    builder: "module:function" taking (program, example_inputs, **options) (options: e.g.
        ``threads``) and returning a runtime with
        ``run(*arrays) -> list[np.ndarray]``, ``input_types`` and ``export_library(path)``.
    library_suffix: file name suffix of the exported library.
    options: fixed keyword arguments of the builder and the loader (e.g. the arm variant).
    loader: "module:function" taking (library path, input types, output tree spec,
        **options) and returning a runtime of an exported library (``qcompiler.load``).
    """

    name: str
    description: str
    scheme: Callable[[], QuantScheme]
    builder: str
    library_suffix: str = ".so"
    options: tuple[tuple[str, Any], ...] = ()
    loader: str = ""

    def load(self, library: Any, input_types: list, out_spec: Any = None) -> Any:
        if not self.loader:
            raise TargetError(f"target {self.name} cannot load an exported library back")
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(module), function)(library, input_types, out_spec, **dict(self.options))

    def build(self, program: Any, example_inputs: Any, **options: Any) -> Any:
        check_threads(options.get("threads"))
        module, function = self.builder.split(":")
        options = {**dict(self.options), **{k: v for k, v in options.items() if v is not None}}
        return getattr(importlib.import_module(module), function)(program, example_inputs, **options)


def check_threads(threads: Any) -> None:
    """``threads`` (compile's argument) is None (every CPU) or a positive int; a TargetError
    with the fix otherwise."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise TargetError(f"threads={threads!r}: give the number of threads the compiled program runs on, an int >= 1, "
                          f"or leave it out (None) to use every CPU. Fix: e.g. threads=1")


TARGETS: dict[str, TargetInfo] = {
    "host": TargetInfo("host", "this machine's CPU (LLVM, x86-64), run in-process through TVM's Relax VM",
                       host_scheme, "qcompiler.targets.host:compile_host", loader="qcompiler.targets.host:load_host"),
    "arm_cpu": TargetInfo("arm_cpu", "aarch64 Cortex-A76 class (NEON + dotprod): our sdot kernels, cross-built and run "
                          "here under qemu-aarch64 -cpu cortex-a76 (needs scripts/setup-arm.sh)",
                          arm_scheme, "qcompiler.targets.arm_cpu:compile_arm", options=(("variant", "arm_cpu"),),
                          loader="qcompiler.targets.arm_cpu:load_arm"),
    "arm_cpu_a53": TargetInfo("arm_cpu_a53", "aarch64 Cortex-A53 class (NEON, no dotprod): TVM's generic kernels, "
                              "run under qemu-aarch64 -cpu cortex-a53", arm_scheme,
                              "qcompiler.targets.arm_cpu:compile_arm", options=(("variant", "arm_cpu_a53"),),
                              loader="qcompiler.targets.arm_cpu:load_arm"),
    "arm_cpu_i8mm": TargetInfo("arm_cpu_i8mm", "aarch64 with i8mm (Neoverse-N2 / Cortex-X2 class): smmla GEMMs, run "
                               "under qemu-aarch64 -cpu max", arm_scheme, "qcompiler.targets.arm_cpu:compile_arm",
                               options=(("variant", "arm_cpu_i8mm"),), loader="qcompiler.targets.arm_cpu:load_arm"),
}


def get_target(name: str) -> TargetInfo:
    """The target called ``name``; a TargetError listing the known ones otherwise."""
    if isinstance(name, TargetInfo):
        return name
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}{did_you_mean(str(name), list(TARGETS))}; "
                          f"known targets: {', '.join(TARGETS)}")
    return TARGETS[name]
