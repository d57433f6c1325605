"""CompiledModel: an integer program built for a target, run like the float model.

    cm = qcompile(model, example_inputs, target="host", bits=8, calibration=data)
    y = cm(x)              # float in, float out: quantize at the edges, integer program inside
    q = cm.run_int(qx)     # integer tensors in and out (the edges' encodings: cm.input_encodings)
    print(cm.report())     # per pass and per layer: time, error vs float, bytes
    cm.export("out/")      # library + encodings.json + manifest.json + report.txt (qcompiler.export)
    m = qcompiler.load("out/")   # the exported library loaded back: m(x) == cm(x)

Every build equals ``qm.interpret`` bit for bit (tests/test_lower_host.py); the shapes are
the example inputs' (static), and a call with another shape or dtype is an error that says
what was expected.
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch
import torch.fx as fx
from torch.utils._pytree import treespec_dumps, treespec_loads

from .compile_report import compile_report
from .encodings import encodings as quantized_encodings
from .errors import QCompilerError
from .export import ExportError, read_manifest, write_export
from .fixed_point import quantize_values
from .inputs import check_built_inputs, describe_types
from .kernel_report import REPORT_FILE, LoadedReport, kernel_entries, loaded_report
from .ops import op_of
from .log import native_output_captured
from .progress import task
from .targets import get_target

__all__ = ["CompiledModel", "LoadedModel", "ExportError", "QuantizedProgram", "compile_model", "load", "integer_core"]


class QuantizedProgram(Protocol):
    """What ``compile_model`` builds: a qcompiler.QuantizedModel (qcompiler.quantize), or
    anything with the same attributes."""

    graph: fx.GraphModule  # the simulation (for the encodings and the report)
    program: fx.GraphModule  # the integer program
    example_inputs: tuple
    scheme: Any  # the QuantScheme


def _flat_inputs(inputs: Any) -> tuple:
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return (inputs,)
    return tuple(inputs)


def integer_core(program: fx.GraphModule) -> tuple[fx.GraphModule, list[dict], list[Optional[dict]]]:
    """The program without its edge quantize/dequantize: integer inputs in, integer outputs
    out. Returns (core, input encodings, output encodings; None for an output that is not
    dequantized at the edge)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    encodings: list[dict] = []
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    for p in placeholders:
        users = list(p.users)
        if not users or any(op_of(u.target) != "quantize" for u in users):
            raise QCompilerError(f"run_int: input '{p.name}' is not quantized at the edge (used by "
                                 f"{', '.join(u.name for u in users) or 'nothing'}); call the model with float inputs instead")
        _, scale, zp, qmin, qmax, dtype = users[0].args[:6]
        new = graph.placeholder(f"{p.name}_q")
        for u in users:
            env[u] = new
        encodings.append({"name": p.name, "scale": float(scale), "zero_point": int(zp), "qmin": int(qmin), "qmax": int(qmax),
                          "dtype": str(dtype).replace("torch.", "")})
    out_encodings: list[Optional[dict]] = []

    def leaf(n: Any) -> Any:
        if isinstance(n, fx.Node) and op_of(n.target) == "dequantize":
            source, scale, zp = n.args[:3]
            out_encodings.append({"name": n.name, "scale": float(scale), "zero_point": int(zp)})
            return env[source]
        if isinstance(n, (list, tuple)):
            return type(n)(leaf(v) for v in n)
        if isinstance(n, fx.Node):
            out_encodings.append(None)
            return env[n]
        return n

    for node in program.graph.nodes:
        if node.op == "placeholder" or node in env:
            continue
        if node.op == "output":
            graph.output(leaf(node.args[0]))
            break
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.eliminate_dead_code()
    graph._codegen = copy.copy(program.graph._codegen)  # the same input/output structure (tree specs are immutable)
    return fx.GraphModule(program, graph), encodings, out_encodings


EXPORT_FILES = ("encodings.json", REPORT_FILE)  # besides the library and manifest.json


def export_names(target: Any) -> tuple[str, ...]:
    """The files ``CompiledModel.export`` writes for ``target`` (a TargetInfo), besides
    manifest.json: the library first."""
    return (f"model{target.library_suffix}", *EXPORT_FILES)


class CompiledModel:
    """A quantized model's integer program built for ``target``.

    qm: the QuantizedModel it was built from (simulation, program, interpreter).
    target: the TargetInfo (qcompiler.targets.TARGETS).
    runtime: the target's runtime for the float-in/float-out program.
    timings: seconds per compile step ("quantize", "lower + build").
    """

    def __init__(self, qm: QuantizedProgram, target: Any, runtime: Any, example_inputs: tuple, timings: dict[str, float]):
        self.qm = qm
        self.target = target
        self.runtime = runtime
        self.example_inputs = example_inputs
        self.timings = timings
        self._core: Optional[tuple] = None
        self._report: Any = None

    # ---------------------------------------------------------------- running
    @property
    def input_types(self) -> list[tuple[tuple[int, ...], str]]:
        """(shape, dtype) of each input, as built."""
        return list(self.runtime.input_types)

    def __call__(self, *inputs: Any) -> Any:
        """Float inputs in, float outputs out (the program's output structure)."""
        arrays = check_built_inputs(inputs, self.input_types, f"the model compiled for {self.target.name}")
        return self.runtime(*arrays)

    def _integer_runtime(self):
        if self._core is None:
            core, in_enc, out_enc = integer_core(self.qm.program)
            examples = [np.asarray(self._quantize_input(x, e)) for x, e in zip(self.example_inputs, in_enc)]
            self._core = (self.target.build(core, tuple(examples)), in_enc, out_enc)
        return self._core

    @staticmethod
    def _quantize_input(x: Any, encoding: dict) -> np.ndarray:
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        q = quantize_values(x, encoding["scale"], encoding["zero_point"], encoding["qmin"], encoding["qmax"])
        return q.astype(encoding["dtype"])

    @property
    def input_encodings(self) -> list[dict]:
        """How each input is quantized at the edge: scale, zero point, qmin, qmax, dtype."""
        return self._integer_runtime()[1] if self._core else integer_core(self.qm.program)[1]

    def run_int(self, *inputs: Any) -> Any:
        """Integer inputs in, integer outputs out: the program without its edge quantize and
        dequantize (built on first use)."""
        runtime, _, _ = self._integer_runtime()
        arrays = check_built_inputs(inputs, runtime.input_types, "run_int")
        return runtime(*arrays)

    # ---------------------------------------------------------------- reporting and export
    def encodings(self) -> dict:
        """Every quantized tensor's scale, zero point, bits and dtype (qcompiler.encodings), plus the edges."""
        result = quantized_encodings(self.qm.graph)
        result["inputs"] = integer_core(self.qm.program)[1]
        return result

    def report(self, data: Any = None, repeats: int = 5):
        """Per pass and per layer: time, error vs float, bytes (qcompiler.compile_report).
        ``data``: batches to measure the error on (default: the example inputs). The
        default report is measured once and kept: ``export`` writes the one ``report()``
        printed."""
        if data is not None or repeats != 5:
            return compile_report(self, data, repeats)
        if self._report is None:
            self._report = compile_report(self, None, repeats)
        return self._report

    def export(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the target library (``model.so``), ``encodings.json``, ``manifest.json`` and
        ``report.txt`` into ``directory``: a new or empty directory, or one holding a previous
        qcompiler export, whose files (and only those) are replaced; any other non-empty
        directory is refused unless ``overwrite=True``, which replaces it whole (never the
        working directory or a parent of it). Atomic: a failure leaves ``directory`` as it
        was. Load it back with ``qcompiler.load(directory)``. Rules: qcompiler.export.
        Raises ExportError naming the directory and the fix."""
        library, encodings_file, report_file = export_names(self.target)
        out_spec = getattr(self.runtime, "out_spec", None)

        def write_library(path: Path) -> None:
            with native_output_captured("TVM"):
                self.runtime.export_library(str(path))

        manifest = {"target": self.target.name, "library": library,
                    "inputs": [{"shape": list(s), "dtype": d} for s, d in self.input_types],
                    "output_spec": treespec_dumps(out_spec) if out_spec is not None else None,
                    "scheme": self.qm.scheme.describe(), "timings_s": self.timings,
                    "kernels": kernel_entries(self.qm.program, getattr(self.runtime, "kernel_choices", None))}
        files = {library: write_library,
                 encodings_file: lambda path: path.write_text(json.dumps(self.encodings(), indent=1)),
                 report_file: lambda path: path.write_text(str(self.report()))}
        return write_export(directory, files, manifest, overwrite=overwrite)

    def __repr__(self) -> str:
        return (f"CompiledModel(target={self.target.name}, inputs {describe_types(self.input_types)}, "
                f"{self.qm.scheme.describe()})")


def compile_model(qm: QuantizedProgram, target: str = "host", threads: Optional[int] = None,
                  progress: Optional[bool] = None) -> CompiledModel:
    """Build ``qm``'s integer program for ``target`` (see qcompiler.targets.TARGETS), its
    kernels tiled for and run on ``threads`` threads (default: every CPU). ``progress``:
    a spinner naming the stage (lowering, building), see qcompiler.progress. What TVM
    prints while building goes to the "qcompiler" logger at DEBUG (qcompiler.log)."""
    info = get_target(target)
    start = time.perf_counter()
    with task(f"compiling for {info.name}", progress), native_output_captured("TVM"):
        runtime = info.build(qm.program, qm.example_inputs, threads=threads)
    return CompiledModel(qm, info, runtime, qm.example_inputs, {"lower + build": time.perf_counter() - start})


class LoadedModel:
    """An exported library loaded back (``qcompiler.load``): ``m(x)`` is float in, float out,
    bit for bit what the CompiledModel that exported it gives. Host libraries are loaded
    into this process (TVM's Relax VM); arm_cpu libraries run under qemu-aarch64 as they do
    when compiled.

    directory: the export directory; manifest: its manifest.json; encodings: its
    encodings.json (how each tensor is quantized); runtime: the target's runtime.
    ``report()``: which kernel each layer got, as the compiled model's report showed it.
    """

    def __init__(self, directory: Path, manifest: dict, encodings: dict, runtime: Any, target: Any):
        self.directory = directory
        self.manifest = manifest
        self.encodings = encodings
        self.runtime = runtime
        self.target = target

    @property
    def input_types(self) -> list[tuple[tuple[int, ...], str]]:
        return [(tuple(i["shape"]), i["dtype"]) for i in self.manifest["inputs"]]

    def __call__(self, *inputs: Any) -> Any:
        arrays = check_built_inputs(inputs, self.input_types, f"the model loaded from {self.directory}")
        return self.runtime(*arrays)

    def report(self) -> LoadedReport:
        """Each layer's kernel (ours, or "generic") and, for a fallback, why: the kernel
        column and fallback lines of the exporting model's ``report()``, from the manifest's
        ``kernels`` (qcompiler.kernel_report). An older manifest without them gives a report
        with no layers and a note saying so. The rest of that report is report.txt."""
        return loaded_report(self.directory, self.manifest)

    def __repr__(self) -> str:
        return f"LoadedModel({self.directory}, target={self.target.name}, inputs {describe_types(self.input_types)})"


def load(directory: str | os.PathLike) -> LoadedModel:
    """Load the export in ``directory`` (written by ``cm.export``) to run it: host libraries
    in this process, arm_cpu libraries under qemu-aarch64 (scripts/setup-arm.sh). Raises
    ExportError when the directory holds no qcompiler export or its library is missing."""
    directory, manifest = read_manifest(directory)
    info = get_target(manifest["target"])
    library = directory / manifest["library"]
    if not library.is_file():
        raise ExportError(f"{directory}: the library {manifest['library']} listed in its manifest is missing; export again")
    try:
        encodings = json.loads((directory / "encodings.json").read_text())
    except (OSError, ValueError):
        encodings = {}
    spec = manifest.get("output_spec")
    out_spec = treespec_loads(spec) if spec else None
    types = [(tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"]]
    with native_output_captured("TVM"):
        runtime = info.load(library, types, out_spec)
    return LoadedModel(directory, manifest, encodings, runtime, info)
