"""CompiledModel: an integer program built for a target, run like the float model.

    cm = qcompile(model, example_inputs, target="host", bits=8, calibration=data)
    y = cm(x)              # float in, float out: quantize at the edges, integer program inside
    q = cm.run_int(qx)     # integer tensors in and out (the edges' encodings: cm.input_encodings)
    print(cm.report())     # per pass and per layer: time, error vs float, bytes
    cm.export("out/")      # library + encodings.json + report, written atomically

Every build equals ``qm.interpret`` bit for bit (tests/test_lower_host.py); the shapes are
the example inputs' (static), and a call with another shape or dtype is an error that says
what was expected.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.fx as fx

from .errors import QCompilerError
from .integer_ops import op_of
from .quantize import QuantizedModel


class ExportError(QCompilerError):
    """A compiled model could not be exported (the directory is left as it was)."""


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
    graph._codegen = copy.deepcopy(program.graph._codegen)  # the same input/output structure
    return fx.GraphModule(program, graph), encodings, out_encodings


class CompiledModel:
    """A quantized model's integer program built for ``target``.

    qm: the QuantizedModel it was built from (simulation, program, interpreter).
    target: the TargetInfo (qcompiler.targets.TARGETS).
    runtime: the target's runtime for the float-in/float-out program.
    timings: seconds per compile step ("quantize", "lower + build").
    """

    def __init__(self, qm: QuantizedModel, target: Any, runtime: Any, example_inputs: tuple, timings: dict[str, float]):
        self.qm = qm
        self.target = target
        self.runtime = runtime
        self.example_inputs = example_inputs
        self.timings = timings
        self._core: Optional[tuple] = None

    # ---------------------------------------------------------------- running
    @property
    def input_types(self) -> list[tuple[tuple[int, ...], str]]:
        """(shape, dtype) of each input, as built."""
        return list(self.runtime.input_types)

    def _check(self, inputs: tuple, types: list, what: str) -> list[np.ndarray]:
        if len(inputs) != len(types):
            raise QCompilerError(f"{what} takes {len(types)} input(s) ({self._describe(types)}), got {len(inputs)}")
        arrays = []
        for i, (value, (shape, dtype)) in enumerate(zip(inputs, types)):
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
                hint = ""
                if tuple(array.shape) != tuple(shape):
                    hint = " (shapes are static: compile again with an example input of the new shape)"
                elif np.issubdtype(array.dtype, np.floating):
                    hint = f" (convert it: x.to(torch.{dtype}))"
                raise QCompilerError(f"{what}: input {i} expected {dtype} {list(shape)}, got {array.dtype} {list(array.shape)}{hint}")
            arrays.append(np.ascontiguousarray(array))
        return arrays

    @staticmethod
    def _describe(types: list) -> str:
        return ", ".join(f"{dtype} {list(shape)}" for shape, dtype in types)

    def __call__(self, *inputs: Any) -> Any:
        """Float inputs in, float outputs out (the program's output structure)."""
        arrays = self._check(inputs, self.input_types, f"the model compiled for {self.target.name}")
        return self.runtime(*arrays)

    def _integer_runtime(self):
        if self._core is None:
            core, in_enc, out_enc = integer_core(self.qm.program)
            examples = [np.asarray(self._quantize_input(x, e)) for x, e in zip(self.example_inputs, in_enc)]
            self._core = (self.target.build(core, tuple(examples)), in_enc, out_enc)
        return self._core

    @staticmethod
    def _quantize_input(x: Any, encoding: dict) -> np.ndarray:
        from .fixed_point import quantize_values

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
        arrays = self._check(inputs, runtime.input_types, "run_int")
        return runtime(*arrays)

    # ---------------------------------------------------------------- reporting and export
    def encodings(self) -> dict:
        """Every quantized tensor's scale, zero point, bits and dtype (qcompiler.encodings), plus the edges."""
        from .encodings import encodings

        result = encodings(self.qm.graph)
        result["inputs"] = integer_core(self.qm.program)[1]
        return result

    def report(self, data: Any = None, repeats: int = 5):
        """Per pass and per layer: time, error vs float, bytes (qcompiler.compile_report).
        ``data``: batches to measure the error on (default: the example inputs)."""
        from .compile_report import compile_report

        return compile_report(self, data, repeats)

    def export(self, directory: str | os.PathLike) -> Path:
        """Write the target library, ``encodings.json`` and ``report.txt`` into ``directory``,
        atomically: everything goes to a temporary sibling first, which replaces
        ``directory`` only when complete. A failure leaves ``directory`` as it was."""
        directory = Path(directory).resolve()
        parent = directory.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
        except OSError as exc:
            raise ExportError(f"cannot export to {directory}: {exc.strerror or exc} (choose a writable directory)") from exc
        try:
            library = staging / f"model{self.target.library_suffix}"
            self.runtime.export_library(str(library))
            manifest = {"target": self.target.name, "library": library.name,
                        "inputs": [{"shape": list(s), "dtype": d} for s, d in self.input_types],
                        "scheme": self.qm.scheme.describe(), "timings_s": self.timings}
            (staging / "encodings.json").write_text(json.dumps(self.encodings(), indent=1))
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
            (staging / "report.txt").write_text(str(self.report()))
            if directory.exists():
                backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=parent))
                os.replace(directory, backup / "old")
                os.replace(staging, directory)
                shutil.rmtree(backup, ignore_errors=True)
            else:
                os.replace(staging, directory)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise ExportError(f"cannot export to {directory}: {exc.strerror or exc}") from exc
            raise
        return directory

    def __repr__(self) -> str:
        return (f"CompiledModel(target={self.target.name}, inputs {self._describe(self.input_types)}, "
                f"{self.qm.scheme.describe()})")


def compile_model(qm: QuantizedModel, target: str = "host", threads: Optional[int] = None) -> CompiledModel:
    """Build ``qm``'s integer program for ``target`` (see qcompiler.targets.TARGETS), its
    kernels tiled for and run on ``threads`` threads (default: every CPU)."""
    from .targets import get_target

    info = get_target(target)
    start = time.perf_counter()
    runtime = info.build(qm.program, qm.example_inputs, threads=threads)
    return CompiledModel(qm, info, runtime, qm.example_inputs, {"lower + build": time.perf_counter() - start})


def qcompile(model: torch.nn.Module, example_inputs: Any, target: str = "host", bits: int = 8,
             threads: Optional[int] = None, **quantize_kwargs: Any) -> CompiledModel:
    """``quantize`` with the target's scheme, then ``compile``: the one-line promise.
    ``threads``: see ``compile_model``. ``quantize_kwargs`` go to qcompiler.quantize
    (calibration, method, passes, ptq, overrides...)."""
    from .quantize import quantize
    from .targets import get_target

    info = get_target(target)
    quantize_kwargs.setdefault("scheme", info.scheme())
    start = time.perf_counter()
    qm = quantize(model, example_inputs, bits=bits, **quantize_kwargs)
    quantize_seconds = time.perf_counter() - start
    cm = compile_model(qm, info, threads=threads)
    cm.timings = {"quantize": quantize_seconds, **cm.timings}
    return cm
