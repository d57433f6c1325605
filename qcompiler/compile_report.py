"""The report of a compiled model: per pass (what it changed, its time and error) and per
layer of the integer program (its kernel time on the target, its share of the MACs, its
error against the float model, and its bytes).

Per-layer time comes from the runtime's ``profile`` (one entry per kernel call, in call
order); kernels are matched to the program's layers in order, by kind (a conv2d kernel to
the next conv2d layer, and so on). Error is the SQNR against the float model of the value
the layer produces, with everything before it quantized (``qm.analyze``'s cumulative SQNR).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch.fx as fx

from . import meta
from .graph import get_tensor
from .interpreter import interpret
from .ops import find_op, op_for_target, op_of

# Kernel words, data arguments and MAC counts are the op registry's (qcompiler/ops: each op's
# kernel_words, data_args and macs). Elementwise kernels have names too generic to attribute:
# they are reported together.


@dataclass
class LayerRow:
    node: str
    op: str
    shape: tuple
    macs: int
    weight_bytes: int
    sqnr_db: Optional[float] = None
    time_ms: Optional[float] = None
    sim_node: str = ""
    kernel: str = ""  # the kernel the target built for it ("" where the target does not say)
    fallback: Optional[str] = None  # why it got the generic lowering instead of our kernel, if it did


@dataclass
class CompileReport:
    target: str
    passes: Any
    layers: list[LayerRow]
    timings: dict[str, float]
    total_ms: Optional[float] = None
    unmatched_ms: float = 0.0
    notes: list[str] = field(default_factory=list)

    def tables(self) -> list:
        from rich.table import Table

        t = Table(title=f"layers of the integer program ({self.target})")
        for col in ("layer", "op", "output shape", "kernel", "MMACs", "MAC share", "time (ms)", "time share", "SQNR vs float (dB)",
                    "bytes"):
            t.add_column(col, justify="left" if col in ("layer", "op", "output shape", "kernel") else "right")
        total_macs = sum(r.macs for r in self.layers) or 1
        timed = sum(r.time_ms or 0.0 for r in self.layers) + self.unmatched_ms or 1.0
        for r in self.layers:
            t.add_row(r.node, r.op, "×".join(map(str, r.shape)), r.kernel or "-", f"{r.macs / 1e6:.2f}", f"{r.macs / total_macs:.1%}",
                      "-" if r.time_ms is None else f"{r.time_ms:.3f}", "-" if r.time_ms is None else f"{r.time_ms / timed:.1%}",
                      "-" if r.sqnr_db is None else ("inf" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}"), str(r.weight_bytes))
        return [self.passes.table(), t]

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=170, record=True, file=io.StringIO())
        for table in self.tables():
            console.print(table)
        total_macs = sum(r.macs for r in self.layers)
        lines = [f"target {self.target}; " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()),
                 f"{total_macs / 1e6:.1f} MMACs, {sum(r.weight_bytes for r in self.layers) / 1024:.1f} KiB of weights, biases and tables"]
        if self.total_ms is not None:
            lines.append(f"kernels {self.total_ms:.2f} ms per call (median of the per-kernel times); {self.unmatched_ms:.2f} ms "
                         f"of it in elementwise kernels (add, mul, concat, requantize, ...) not attributed to a layer")
        lines += fallback_lines(self.layers)
        return console.export_text() + "\n".join(lines + self.notes) + "\n"


def fallback_lines(rows: list) -> list[str]:
    """One line per layer that got the generic lowering for a reason (a row's ``fallback``):
    what the report prints under its tables (the compiled model's and a loaded export's)."""
    return [f"{r.node} ({r.op}): {r.kernel}, not our kernel, because: {r.fallback}" for r in rows if r.fallback]


def _bytes(program: fx.GraphModule, node: fx.Node) -> int:
    """Bytes of the layer's weights, bias and table (its op's ``data_args``: argument
    position and the bytes per element a target stores it in, None for its own dtype)."""
    op = op_for_target(node.target)
    total = 0
    for i, size in (op.data_args if op is not None else ()):
        v = node.args[i]
        if isinstance(v, fx.Node) and v.op == "get_attr":
            t = get_tensor(program, v)
            total += t.numel() * (size or t.element_size())
    return total


def _macs(program: fx.GraphModule, node: fx.Node, shape: tuple) -> int:
    op = op_for_target(node.target)
    return op.macs(program, node, shape) if op is not None and op.macs is not None else 0


def layer_nodes(program: fx.GraphModule) -> list[tuple[fx.Node, str]]:
    """The layers of the integer program, in program order: every node of a registered op
    but the edge quantize / dequantize, with its op's name."""
    layers = []
    for node in program.graph.nodes:
        name = op_of(node.target) if node.op == "call_function" else None
        if name is not None and name not in ("quantize", "dequantize"):
            layers.append((node, name))
    return layers


def layer_rows(program: fx.GraphModule, shapes: dict[str, tuple]) -> list[LayerRow]:
    rows = []
    for node, name in layer_nodes(program):
        shape = shapes.get(node.name, ())
        rows.append(LayerRow(node.name, name, shape, _macs(program, node, shape), _bytes(program, node),
                             sim_node=node.meta.get(meta.SIM_NODE, "")))
    return rows


def _kernel_words(op_name: str) -> tuple[str, ...]:
    op = find_op(op_name)
    return op.kernel_words if op is not None else ()


def _attach_times(rows: list[LayerRow], kernel_times: list[tuple[str, float]]) -> float:
    """Give each layer the time of the next kernel call whose name has the layer's kernel
    word; returns the time of calls matched to no layer."""
    unmatched = 0.0
    queue = list(rows)
    for name, seconds in kernel_times:
        match = next((r for r in queue if any(word in name for word in _kernel_words(r.op))), None)
        if match is None:
            unmatched += seconds * 1e3
            continue
        queue = queue[queue.index(match) + 1:]
        match.time_ms = (match.time_ms or 0.0) + seconds * 1e3
    return unmatched


def attach_kernels(rows: list, choices: Optional[dict]) -> None:
    """Give each layer (a row with ``node``, ``kernel`` and ``fallback``) the kernel its
    target chose (``runtime.kernel_choices``: node name -> a choice with ``kernel`` and, for
    a fallback to the generic lowering, ``reason``); a layer the target has no kernel of
    ours for is "generic" (TVM's default kernels). A runtime that records no choices (e.g.
    a loaded export's: its report reads them from the manifest, qcompiler.kernel_report)
    leaves the column empty."""
    if not choices:
        return
    for row in rows:
        choice = choices.get(row.node)
        row.kernel = choice.kernel if choice is not None else "generic"
        row.fallback = choice.reason if choice is not None else None


def compile_report(cm: Any, data: Any = None, repeats: int = 5) -> CompileReport:
    qm = cm.qm
    inputs = tuple(cm.example_inputs)
    record: dict = {}
    interpret(qm.program, *inputs, record=record)
    shapes = {k: tuple(np.shape(v)) for k, v in record.items()}
    rows = layer_rows(qm.program, shapes)
    attach_kernels(rows, getattr(cm.runtime, "kernel_choices", None))
    notes = []
    try:
        analysis = qm.analyze(data if data is not None else [inputs])
        by_value = {r.node: r.cumulative_sqnr for r in analysis.rows}
        sim_nodes = {n.name: n for n in qm.graph.graph.nodes}
        for row in rows:
            q = sim_nodes.get(row.sim_node)
            if q is not None and q.args and isinstance(q.args[0], fx.Node):
                row.sqnr_db = by_value.get(q.args[0].name)
    except Exception as exc:  # the report still shows time and size
        notes.append(f"error vs float not measured: {type(exc).__name__}: {exc}")
    total_ms, unmatched = None, 0.0
    profile = getattr(cm.runtime, "profile", None)
    if profile is not None:
        runs = [profile(*inputs) for _ in range(repeats)]
        median = [(runs[0][i][0], float(np.median([r[i][1] for r in runs]))) for i in range(len(runs[0]))]
        unmatched = _attach_times(rows, median)
        total_ms = sum(s for _, s in median) * 1e3
    return CompileReport(cm.target.name, qm.report, rows, dict(cm.timings), total_ms, unmatched, notes)
