"""The quantized conv/linear layers of a simulation graph, seen as units: input, integer
weight and scales, int32 bias, fused activations, output quantizer. PTQ passes (bias
correction, AdaRound) and the analysis read and rewrite layers through this view."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.fx as fx

from . import meta
from .graph import get_tensor, run_on_constants, set_tensor, single_user
from .ops import ACTIVATION, PASSTHROUGH, op_kind
from .qparams import QuantParams, is_dequantize, is_qdq_pair, is_quantize, read_qparams
from .scheme import QuantSpec

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten


def quantized_source(value) -> Optional[fx.Node]:
    """The dequantize of an activation a value comes from, looking through ops that pass
    integer values through unchanged (zero padding, layout ops, max pooling); None if it is
    not quantized."""
    while isinstance(value, fx.Node):
        if is_qdq_pair(value):
            return value
        if value.op != "call_function" or op_kind(value.target) != PASSTHROUGH or not value.args:
            return None
        value = value.args[0]
    return None


@dataclass
class QuantLayer:
    node: fx.Node  # the conv / linear
    input_dq: fx.Node  # the dequantize its input comes from (maybe through padding / layout ops)
    weight_dq: fx.Node
    bias_dq: Optional[fx.Node]
    activations: list[fx.Node]  # fused activation chain after the layer
    output_q: Optional[fx.Node]  # the quantize after the layer (and its activations)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def output(self) -> fx.Node:
        """The last float node before the output quantizer (the layer or its last activation)."""
        return self.activations[-1] if self.activations else self.node

    def input_scale(self, gm: fx.GraphModule) -> float:
        """The input's per-tensor scale (QuantParamsError if it is quantized otherwise)."""
        return read_qparams(gm, self.input_dq).scalar(f"the input of layer '{self.name}'")[0]

    def weight_params(self, gm: fx.GraphModule) -> QuantParams:
        return read_qparams(gm, self.weight_dq)

    def weight_int(self, gm: fx.GraphModule) -> torch.Tensor:
        return get_tensor(gm, self.weight_dq.args[0])

    def weight_scales(self, gm: fx.GraphModule) -> torch.Tensor:
        """float64 (out channels,): one scale per output channel (expanded from a
        per-tensor or per-group weight quantizer)."""
        return self.weight_params(gm).output_channel_scales(self.weight_int(gm).shape[0], f"layer '{self.name}'")

    def weight_spec(self) -> QuantSpec:
        return self.node.meta[meta.WEIGHT_SPEC]

    def float_weight(self) -> torch.Tensor:
        return self.node.meta[meta.FLOAT_WEIGHT]

    def set_weight_int(self, gm: fx.GraphModule, q: torch.Tensor) -> None:
        set_tensor(gm, self.weight_dq.args[0].target, q.to(self.weight_int(gm).dtype))

    def dequantized_weight(self, gm: fx.GraphModule) -> torch.Tensor:
        """The weight as the simulation computes it: its dequantize node applied to the
        current integer weight."""
        return run_on_constants(gm, self.weight_dq)

    def bias_int(self, gm: fx.GraphModule) -> Optional[torch.Tensor]:
        return None if self.bias_dq is None else get_tensor(gm, self.bias_dq.args[0])

    def bias_scales(self, gm: fx.GraphModule) -> torch.Tensor:
        return self.input_scale(gm) * self.weight_scales(gm)

    def set_bias_int(self, gm: fx.GraphModule, b: torch.Tensor) -> None:
        limit = 2**31 - 1
        set_tensor(gm, self.bias_dq.args[0].target, b.clamp(-limit - 1, limit).to(torch.int32))

    def conv_args(self) -> dict:
        """stride/padding/dilation/groups of a convolution (empty for a linear)."""
        if self.node.target != aten.convolution.default:
            return {}
        a = self.node.args
        return dict(stride=list(a[3]), padding=list(a[4]), dilation=list(a[5]), groups=int(a[8]))


def quant_layers(gm: fx.GraphModule) -> Iterator[QuantLayer]:
    """Every conv/linear of a simulation whose input and weight are quantized, in order."""
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (aten.convolution.default, aten.linear.default):
            continue
        x, w = quantized_source(node.args[0]), node.args[1]
        b = node.args[2] if len(node.args) > 2 else None
        if x is None:
            continue
        if not is_dequantize(w):
            continue
        bias_dq = b if isinstance(b, fx.Node) and b.target == qd.dequantize_per_channel.default else None
        acts, end = [], node
        while True:
            user = single_user(end)
            if user is None or op_kind(user.target) != ACTIVATION or user.args[0] is not end:
                break
            acts.append(user)
            end = user
        out_q = single_user(end)
        out_q = out_q if is_quantize(out_q) else None
        yield QuantLayer(node, x, w, bias_dq, acts, out_q)


def apply_activations(gm: fx.GraphModule, layer: QuantLayer, y: torch.Tensor) -> torch.Tensor:
    """The layer's fused activation chain applied to ``y`` (constants resolved from ``gm``)."""
    for act in layer.activations:
        args = [y] + [get_tensor(gm, a) if isinstance(a, fx.Node) else a for a in act.args[1:]]
        y = act.target(*args, **act.kwargs)
    return y
