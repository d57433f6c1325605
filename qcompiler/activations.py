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


def channel_dim(node: fx.Node) -> int:
    """Where a conv's (dim 1) or a linear's (last dim) output channels are."""
    return 1 if node.target in (torch.ops.aten.convolution.default, torch.ops.aten.conv2d.default) else -1


def channel_mean(t: torch.Tensor, cdim: int) -> torch.Tensor:
    """Per-channel mean (float64) of ``t`` over every dimension but ``cdim``."""
    cdim = cdim % t.dim()
    return t.double().transpose(0, cdim).reshape(t.shape[cdim], -1).mean(dim=1)


class _Means(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: dict[str, int]):
        super().__init__(gm)
        self.wanted = wanted
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted:
            cdim = self.wanted[n.name] % out.dim()
            self.sums[n.name] = self.sums.get(n.name, 0) + channel_mean(out, cdim) * (out.numel() // out.shape[cdim])
            self.counts[n.name] = self.counts.get(n.name, 0) + out.numel() // out.shape[cdim]
        return out


def channel_means(gm: fx.GraphModule, batches: Iterable[tuple], channel_dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """{node name: per-channel mean of its output over all batches} in one pass per batch."""
    means = _Means(gm, channel_dims)
    with torch.no_grad():
        for batch in batches:
            means.run(*batch)
    return {k: means.sums[k] / means.counts[k] for k in channel_dims}


class Stepper(fx.Interpreter):
    """Runs a graph node by node as a generator, so two graphs (or a graph and a pass that
    edits it) can advance in lockstep. ``steps(*inputs)`` yields each node *before* running
    it; ``value(name)`` reads a computed value. Values are freed after their last use."""

    def steps(self, *inputs):
        self.env = {}
        self.args_iter = iter(inputs)
        self.names.clear()
        for node in self.graph.nodes:
            yield node
            self.env[node] = self.run_node(node)
            self.names[node.name] = node
            for dead in self.user_to_last_uses.get(node, []):
                del self.env[dead]
            if node.op == "output":
                return

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.names: dict[str, fx.Node] = {}

    def value(self, name: str):
        return self.env[self.names[name]]
