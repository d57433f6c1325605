"""How the integer program agrees with the simulation, op by op.

Each integer op is run on the simulation's own integer inputs (so errors do not carry from
one op to the next), and its output is compared with the simulation's quantized output of
the same op. The contract (docs/semantics.md): never more than one step apart."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from . import meta
from .interpreter import interpret
from .qparams import is_quantize



@dataclass
class OpAgreement:
    node: str
    op: str
    elements: int
    off_by_one: int
    max_diff: int

    @property
    def fraction_off(self) -> float:
        return self.off_by_one / max(self.elements, 1)


def simulation_codes(sim: fx.GraphModule, inputs: tuple) -> dict[str, np.ndarray]:
    """The integer output of every quantize node of the simulation, by node name."""
    codes: dict[str, np.ndarray] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if is_quantize(n):
                codes[n.name] = out.detach().numpy().astype(np.int64)
            return out

    with torch.no_grad():
        Recorder(sim).run(*inputs)
    return codes


def compare_ops(sim: fx.GraphModule, program: fx.GraphModule, inputs: tuple) -> list[OpAgreement]:
    """One OpAgreement per integer op that stands for a quantize of the simulation."""
    codes = simulation_codes(sim, inputs)
    stands_for = {n.name: n.meta[meta.SIM_NODE] for n in program.graph.nodes if n.meta.get(meta.SIM_NODE) in codes}
    force = {name: codes[q] for name, q in stands_for.items()}
    computed: dict[str, Any] = {}
    interpret(program, *inputs, force=force, record=computed)
    rows = []
    for node in program.graph.nodes:
        if node.name not in stands_for:
            continue
        diff = np.abs(np.asarray(computed[node.name], dtype=np.int64) - codes[stands_for[node.name]])
        op = node.target._schema.name.split("::")[-1] if hasattr(node.target, "_schema") else str(node.target)
        rows.append(OpAgreement(node.name, op, int(diff.size), int((diff == 1).sum()), int(diff.max(initial=0))))
    return rows


def agreement_table(rows: list[OpAgreement]) -> str:
    lines = ["| node | op | elements | off by one | fraction | max diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.node} | {r.op} | {r.elements} | {r.off_by_one} | {r.fraction_off:.2%} | {r.max_diff} |")
    return "\n".join(lines)
