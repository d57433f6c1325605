"""Weight-only fake quantization of conv/linear weights: a quick probe of how well a float
graph's weights quantize (used to measure what CLE buys). The full quantization flow (Q/DQ
on activations, calibration, integer programs) is a separate pipeline."""
from __future__ import annotations


import torch
import torch.fx as fx

from .graph import clone_graph, layer_view, replace_constant_arg, tensor_arg


def fake_quantize_weight(w: torch.Tensor, bits: int = 8, per_channel: bool = False) -> torch.Tensor:
    """Symmetric round-to-nearest(-even) fake quantization: s = max|w| / (2^(b−1) − 1),
    ŵ = s·clamp(round(w/s), −2^(b−1)+1, 2^(b−1)−1); per tensor or per output channel (dim 0).
    An all-zero tensor or channel stays zero."""
    qmax = 2 ** (bits - 1) - 1
    if per_channel:
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape(-1, *([1] * (w.dim() - 1)))
    else:
        amax = w.abs().max()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def fake_quantize_weights(gm: fx.GraphModule, bits: int = 8, per_channel: bool = False) -> fx.GraphModule:
    """A copy of ``gm`` whose conv/linear weights are fake-quantized (activations stay float)."""
    out = clone_graph(gm)
    for node in list(out.graph.nodes):
        if layer_view(out, node) is not None:
            w = tensor_arg(out, node, 1)
            replace_constant_arg(out, node, 1, fake_quantize_weight(w, bits, per_channel), f"{node.name}_weight_w{bits}")
    out.recompile()
    return out


def channel_range_spread(w: torch.Tensor) -> float:
    """max over output channels of max|w_c|, divided by the median over channels: how much
    a per-tensor quantization grid is stretched by the widest channel (1 = balanced)."""
    r = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    med = float(r.median())
    return float(r.max()) / med if med > 0 else float("inf")
