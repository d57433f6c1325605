"""Finding the culprit layer: per quantized value, how much error quantizing it adds.

For every value the simulation quantizes, two SQNRs of that value against the float model:
  local       only this node quantized: its inputs are the float model's values; its own
              weights, bias and output quantizer are applied
  cumulative  everything up to it quantized (the simulation as it runs)
Rows are sorted worst local SQNR first; the node names are the keys ``overrides`` takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.fx as fx

from .activations import record
from .graph import module_of
from .progress import bar
from .ops import ACTIVATION, op_kind
from .qparams import is_qdq_pair, is_quantize


@dataclass
class NodeSensitivity:
    node: str
    op: str
    module: str
    local_sqnr: float
    cumulative_sqnr: float


@dataclass
class Analysis:
    rows: list[NodeSensitivity]

    def table(self, limit: Optional[int] = None) -> str:
        lines = ["| node | op | module | local SQNR (dB) | cumulative SQNR (dB) |", "|---|---|---|---|---|"]
        for r in self.rows[:limit]:
            lines.append(f"| {r.node} | {r.op} | {r.module} | {r.local_sqnr:.1f} | {r.cumulative_sqnr:.1f} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def worst(self, n: int = 5) -> list[str]:
        return [r.node for r in self.rows[:n]]


def _db(signal: float, noise: float) -> float:
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)


class _LocalInterpreter(fx.Interpreter):
    """Runs the simulation with every activation dequantize replaced by the float model's
    value, so each op sees float inputs and only its own quantization."""

    def __init__(self, gm: fx.GraphModule, float_values: dict[str, torch.Tensor]):
        super().__init__(gm)
        self.float_values = float_values
        self.local: dict[str, torch.Tensor] = {}

    def run_node(self, n):
        if is_qdq_pair(n):
            self.local[n.args[0].name] = super().run_node(n)
            return self.float_values[n.args[0].args[0].name]
        return super().run_node(n)


def _base(q: fx.Node) -> tuple[fx.Node, list[str]]:
    """The op that computes a quantized value, and the fused activations after it."""
    base, acts = q.args[0], []
    while isinstance(base, fx.Node) and op_kind(base.target) == ACTIVATION and isinstance(base.args[0], fx.Node) \
            and not is_qdq_pair(base.args[0]):
        acts.append(base.name)
        base = base.args[0]
    return base, acts


def _label(q: fx.Node) -> str:
    base, acts = _base(q)
    if base.op != "call_function" or op_kind(base.target) == "passthrough":
        name = base.op if base.op != "call_function" else ""
    else:
        name = str(base.target).replace("aten.", "").replace(".default", "")
    return " + ".join(p for p in [name, ", ".join(reversed(acts))] if p)


def _module_path(node: Optional[fx.Node]) -> str:
    module = module_of(node) if node is not None else None
    return f"{module[0]} ({module[1]})" if module else ""


def analyze(sim: fx.GraphModule, float_graph: fx.GraphModule, batches: Iterable[tuple],
            progress: Optional[bool] = None) -> Analysis:
    """Per quantized value of ``sim``: local and cumulative SQNR against ``float_graph``.
    ``progress``: a bar over the batches (qcompiler.progress)."""
    qs = [n for n in sim.graph.nodes if is_quantize(n)]
    float_nodes = {n.name: n for n in float_graph.graph.nodes}
    qs = [q for q in qs if q.args[0].name in float_nodes]
    names = sorted({q.args[0].name for q in qs})
    dq_of = {q.name: next(iter(q.users)) for q in qs}
    acc = {q.name: [0.0, 0.0, 0.0] for q in qs}  # signal, local noise, cumulative noise
    with torch.no_grad():
        for batch in bar(batches, desc="analyzing", unit="batch", progress=progress):
            ref = {k: v[0] for k, v in record(float_graph, [batch], names).items()}
            cumulative = {k: v[0] for k, v in record(sim, [batch], [dq.name for dq in dq_of.values()]).items()}
            local = _LocalInterpreter(sim, ref)
            local.run(*batch)
            for q in qs:
                r = ref[q.args[0].name].double()
                acc[q.name][0] += float((r ** 2).sum())
                acc[q.name][1] += float(((r - local.local[q.name].double()) ** 2).sum())
                acc[q.name][2] += float(((r - cumulative[dq_of[q.name].name].double()) ** 2).sum())
    rows = [NodeSensitivity(q.args[0].name, _label(q), _module_path(float_nodes.get(_base(q)[0].name)),
                            _db(acc[q.name][0], acc[q.name][1]), _db(acc[q.name][0], acc[q.name][2])) for q in qs]
    rows.sort(key=lambda r: r.local_sqnr)
    return Analysis(rows)
