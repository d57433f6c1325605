"""Quantization parameters as tensors: one record (``QuantParams``) for every quantizer of
the simulation, however it is written in the graph, and the one way to write a new one.

A quantizer maps x to q = clamp(round(x/s) + z, qmin, qmax) and back to s·(q − z) with

    per tensor   one scale s and zero point z
    per channel  one (s, z) per index along ``axis``
    per group    one (s, z) per ``group_size`` consecutive indices along ``axis``
                 (per-embedding-group quantization, Bondarenko et al. 2021, §4)

The simulation keeps s and z in **buffers** of the graph module (``get_attr`` nodes), so a
later pass (QAT, LSQ) can turn them into parameters and learn them. The Q/DQ nodes are
PyTorch's ``quantized_decomposed`` ops (PT2E's representation), whose arithmetic is the
meaning of a quantizer:

    per tensor   quantize_per_tensor.tensor / dequantize_per_tensor.tensor
                 (scale: float64 buffer of shape (1,); zero point: int64 (1,))
    per channel  quantize_per_channel / dequantize_per_channel (scales float32 (C,))
    per group    the same per-channel ops, their scales and zero points expanded from
                 the (C/g,) group buffers by aten.repeat_interleave(·, g) in the graph

Per-tensor scales are float64 so that a buffer holds exactly the double a calibration
chose, and the program is the same as when the scale was a Python float argument
(``quantize_per_tensor.tensor`` calls ``quantize_per_tensor`` with ``scale.item()``).
PT2E graphs write per-tensor parameters as float/int arguments (``.default``); this module
reads those too. The simulation, the integer conversion and the encodings all read
quantizers through ``read_qparams``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the quantized_decomposed ops
import torch.fx as fx

from . import meta
from .errors import QCompilerError
from .graph import add_constant, get_tensor, node_label

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten

QUANTIZE_PER_TENSOR = (qd.quantize_per_tensor.default, qd.quantize_per_tensor.tensor)
DEQUANTIZE_PER_TENSOR = (qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor)
QUANTIZE_OPS = QUANTIZE_PER_TENSOR + (qd.quantize_per_channel.default,)
DEQUANTIZE_OPS = DEQUANTIZE_PER_TENSOR + (qd.dequantize_per_channel.default,)
EXPAND_GROUPS = aten.repeat_interleave.self_int


class QuantParamsError(QCompilerError):
    """A quantizer whose parameters cannot be read or used where they are needed."""


def is_quantize(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in QUANTIZE_OPS


def is_dequantize(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in DEQUANTIZE_OPS


def is_qdq_pair(node: Any) -> bool:
    """A dequantize whose input is a quantize: an activation quantizer of the simulation."""
    return is_dequantize(node) and is_quantize(node.args[0])


@dataclass(frozen=True, eq=False)
class QuantParams:
    """The parameters of one quantizer.

    scale: float tensor of shape (n,): n = 1 per tensor, the channel count per channel, the
        group count per group. zero_point: int64 tensor of shape (n,).
    axis: the quantized axis (None per tensor). group_size: indices per group along ``axis``
        (1 per channel). qmin, qmax, dtype: the integer range and storage dtype.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    dtype: torch.dtype
    axis: Optional[int] = None
    group_size: int = 1

    @property
    def granularity(self) -> str:
        if self.axis is None:
            return "tensor"
        return "channel" if self.group_size == 1 else "group"

    @property
    def per_tensor(self) -> bool:
        return self.axis is None

    def scalar(self, where: str = "") -> tuple[float, int]:
        """(scale, zero point) as a Python float and int; QuantParamsError unless per tensor."""
        if not self.per_tensor:
            raise QuantParamsError(
                f"{where + ': ' if where else ''}this value is quantized per {self.granularity} along axis {self.axis} "
                f"({self.scale.numel()} scales); the integer program takes per-tensor activations so far: give it a "
                "per-tensor spec (overrides={'<value>': {'activations': qcompiler.activation_spec()}}) or keep the ops "
                "that read it in float (overrides={'<op>': 'float'})")
        return float(self.scale.reshape(-1)[0]), int(self.zero_point.reshape(-1)[0])

    def channel_scales(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-index (scale, zero point) along the axis, float64 and int64 of shape
        (channels,): groups expanded, a per-tensor value repeated."""
        s, z = self.scale.double().reshape(-1), self.zero_point.to(torch.int64).reshape(-1)
        if self.group_size > 1:
            s, z = s.repeat_interleave(self.group_size), z.repeat_interleave(self.group_size)
        if s.numel() == 1:
            s, z = s.expand(channels), z.expand(channels)
        if s.numel() != channels:
            raise QuantParamsError(f"{s.numel()} scales for {channels} channels")
        return s.clone(), z.clone()

    def output_channel_scales(self, channels: int, where: str) -> torch.Tensor:
        """float64 (channels,): a weight's scale per output channel (axis 0), groups
        expanded and a per-tensor scale repeated. QuantParamsError naming ``where`` if the
        weight is quantized along another axis (the integer program cannot take it)."""
        if self.axis not in (None, 0):
            raise QuantParamsError(f"{where}: its weight is quantized along axis {self.axis}; the integer program takes "
                                   "weights quantized per tensor, or per output channel or group of them (axis 0)")
        return self.channel_scales(channels)[0]

    def same_as(self, other: "QuantParams") -> bool:
        return (self.qmin, self.qmax, self.dtype, self.axis, self.group_size) == (
            other.qmin, other.qmax, other.dtype, other.axis, other.group_size) and torch.equal(
            self.scale.double(), other.scale.double()) and torch.equal(self.zero_point, other.zero_point)

    def describe(self) -> str:
        where = "" if self.per_tensor else f" along axis {self.axis}" + (f" (groups of {self.group_size})" if self.group_size > 1 else "")
        return f"per {self.granularity}{where}, [{self.qmin}, {self.qmax}] {str(self.dtype).replace('torch.', '')}"


def _value(gm: fx.GraphModule, arg: Any) -> tuple[torch.Tensor, int]:
    """A scale/zero-point argument as a 1-d tensor, and the group size when it is a group
    buffer expanded in the graph (1 otherwise)."""
    if isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target == EXPAND_GROUPS:
        return get_tensor(gm, arg.args[0]).detach().reshape(-1), int(arg.args[1])
    if isinstance(arg, fx.Node):
        return get_tensor(gm, arg).detach().reshape(-1), 1
    return torch.tensor([arg], dtype=torch.float64 if isinstance(arg, float) else torch.int64), 1


def read_qparams(gm: fx.GraphModule, node: fx.Node) -> QuantParams:
    """The parameters of a quantize or dequantize node of ``gm``, in any of the forms the
    module docstring lists. QuantParamsError names the node if it is neither."""
    if not (is_quantize(node) or is_dequantize(node)):
        raise QuantParamsError(f"{node_label(node)} is not a quantize or dequantize node")
    args = node.args
    if node.target in QUANTIZE_PER_TENSOR + DEQUANTIZE_PER_TENSOR:
        (scale, _), (zp, _) = _value(gm, args[1]), _value(gm, args[2])
        return QuantParams(scale.double(), zp.to(torch.int64), int(args[3]), int(args[4]), args[5])
    scale, group = _value(gm, args[1])
    zp = _value(gm, args[2])[0].to(torch.int64) if args[2] is not None else torch.zeros_like(scale, dtype=torch.int64)
    return QuantParams(scale, zp, int(args[4]), int(args[5]), args[6], axis=int(args[3]), group_size=group)


def qparams_by_value(gm: fx.GraphModule) -> dict[str, QuantParams]:
    """{name of the value a quantize node quantizes: its QuantParams}, read from the graph
    (so it sees what passes after calibration changed)."""
    return {q.args[0].name: read_qparams(gm, q) for q in gm.graph.nodes
            if is_quantize(q) and isinstance(q.args[0], fx.Node)}


def _param_nodes(gm: fx.GraphModule, params: QuantParams, name: str, before: fx.Node) -> tuple[fx.Node, fx.Node]:
    """get_attr nodes for the scale and zero-point buffers (expanded per channel for groups)."""
    scale_dtype = torch.float64 if params.per_tensor else torch.float32
    s_node = add_constant(gm, f"{name}_scale", params.scale.to(scale_dtype).reshape(-1), before, keep_dtype=True)
    z_node = add_constant(gm, f"{name}_zero_point", params.zero_point.to(torch.int64).reshape(-1), before)
    if params.group_size > 1:
        expanded = []
        for buffer in (s_node, z_node):
            with gm.graph.inserting_before(before):
                node = gm.graph.call_function(EXPAND_GROUPS, (buffer, params.group_size))
            node.meta[meta.VAL] = buffer.meta[meta.VAL].repeat_interleave(params.group_size)
            expanded.append(node)
        s_node, z_node = expanded
    return s_node, z_node


def qdq_args(params: QuantParams, scale: Any, zero_point: Any) -> tuple[Any, Any, tuple]:
    """(quantize target, dequantize target, the arguments after the tensor) of a quantizer."""
    if params.per_tensor:
        return qd.quantize_per_tensor.tensor, qd.dequantize_per_tensor.tensor, (
            scale, zero_point, params.qmin, params.qmax, params.dtype)
    return qd.quantize_per_channel.default, qd.dequantize_per_channel.default, (
        scale, zero_point, params.axis, params.qmin, params.qmax, params.dtype)


def insert_quantizer(gm: fx.GraphModule, value: fx.Node, params: QuantParams, name: str, before: fx.Node,
                     shared: Optional[fx.Node] = None) -> tuple[fx.Node, fx.Node]:
    """Insert quantize → dequantize of ``value`` before the node ``before`` and return
    (q, dq); the users of ``value`` are not rewired. The parameters go to new buffers named
    after ``name``, or, with ``shared`` (a quantize node), are read from that quantizer's
    buffers (one parameter for both, as a QAT pass would learn it)."""
    anchor = before
    if shared is not None:
        s_node, z_node = shared.args[1], shared.args[2]
    else:
        s_node, z_node = _param_nodes(gm, params, name, anchor)
    q_target, dq_target, rest = qdq_args(params, s_node, z_node)
    with gm.graph.inserting_before(anchor):
        q = gm.graph.call_function(q_target, (value, *rest))
        dq = gm.graph.call_function(dq_target, (q, *rest))
    return q, dq


def insert_dequantize(gm: fx.GraphModule, q_node: fx.Node, params: QuantParams, name: str, before: fx.Node) -> fx.Node:
    """A dequantize of the integer constant ``q_node`` (a weight), before ``before``, its
    parameters in new buffers named after ``name``."""
    s_node, z_node = _param_nodes(gm, params, name, before)
    _, dq_target, rest = qdq_args(params, s_node, z_node)
    with gm.graph.inserting_before(before):
        return gm.graph.call_function(dq_target, (q_node, *rest))


def axis_of(params: QuantParams, ndim: int, where: str) -> int:
    """``params.axis`` as a non-negative axis of an ``ndim``-d value; QuantParamsError if
    it is out of range."""
    if params.axis is None:
        raise QuantParamsError(f"{where}: a per-tensor quantizer has no axis")
    if not -ndim <= params.axis < ndim:
        raise QuantParamsError(f"{where}: axis {params.axis} is out of range for a {ndim}-d value")
    return params.axis % ndim
