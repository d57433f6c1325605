"""Record the values of chosen graph nodes over a set of batches (for bias correction,
AdaRound and per-layer analysis). The graph runs only as far as the last wanted node."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.fx as fx


class _Done(Exception):
    pass


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted:
            self.values[n.name] = out.detach() if isinstance(out, torch.Tensor) else out
            if len(self.values) == len(self.wanted):
                raise _Done
        return out


def record(gm: fx.GraphModule, batches: Iterable[tuple], names: Sequence[str]) -> dict[str, list[torch.Tensor]]:
    """{node name: [its value on each batch]} for the nodes ``names`` of ``gm``."""
    wanted = set(names)
    missing = wanted - {n.name for n in gm.graph.nodes}
    if missing:
        raise KeyError(f"no node(s) {sorted(missing)} in the graph")
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with torch.no_grad():
        for batch in batches:
            rec = _Recorder(gm, wanted)
            try:
                rec.run(*batch)
            except _Done:
                pass
            for name in names:
                out[name].append(rec.values[name])
    return out
