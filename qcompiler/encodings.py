"""Encodings: every quantized tensor's scale, zero point, bits and dtype, read from the
quantized graph (the simulation), as a JSON-ready dict. ``CompiledModel.export`` writes it
next to the library, so a runtime on the device (or another tool) can quantize inputs and
read outputs the way the program does.

    {"activations": {value: {"scale", "zero_point", "bits", "dtype", "qmin", "qmax"}},
     "weights":     {layer: {"scales": [...], "zero_points": [...], "axis", "bits", "dtype", "qmin", "qmax"}},
     "biases":      {layer: {"scales": [...], "zero_points": [...], "axis", "bits": 32, "dtype": "int32", ...}}}
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx

from .graph import get_tensor

qd = torch.ops.quantized_decomposed
PER_TENSOR = {qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default}
PER_CHANNEL_DQ = qd.dequantize_per_channel.default


def _bits(qmin: int, qmax: int) -> int:
    return math.ceil(math.log2(qmax - qmin + 1))


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _as_list(gm: fx.GraphModule, value: Any) -> list:
    if isinstance(value, fx.Node):
        return get_tensor(gm, value).flatten().tolist()
    return [value]


def _constant_encoding(gm: fx.GraphModule, dq: fx.Node) -> dict:
    """The encoding of a dequantized constant (weight or bias)."""
    if dq.target == PER_CHANNEL_DQ:
        _, scales, zps, axis, qmin, qmax, dtype = dq.args[:7]
    else:
        _, scales, zps, qmin, qmax, dtype = dq.args[:6]
        axis = None
    return {"scales": _as_list(gm, scales), "zero_points": [int(z) for z in _as_list(gm, zps)], "axis": axis,
            "bits": _bits(int(qmin), int(qmax)), "dtype": _dtype_name(dtype), "qmin": int(qmin), "qmax": int(qmax)}


def encodings(graph: fx.GraphModule) -> dict[str, dict]:
    """Every quantized tensor of the quantized graph ``graph``: activations by the name of
    the value they quantize, weights and biases by the name of the layer that uses them."""
    result: dict[str, dict] = {"activations": {}, "weights": {}, "biases": {}}
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == qd.quantize_per_tensor.default:
            value, scale, zp, qmin, qmax, dtype = node.args[:6]
            name = value.name if isinstance(value, fx.Node) else node.name
            result["activations"][name] = {"scale": float(scale), "zero_point": int(zp), "bits": _bits(qmin, qmax),
                                           "dtype": _dtype_name(dtype), "qmin": int(qmin), "qmax": int(qmax)}
        elif node.target in (PER_CHANNEL_DQ, qd.dequantize_per_tensor.default):
            source = node.args[0]
            if not (isinstance(source, fx.Node) and source.op == "get_attr"):
                continue
            for user in node.users:
                position = user.args.index(node) if node in user.args else None
                kind = {1: "weights", 2: "biases"}.get(position)
                if kind is not None:
                    result[kind][user.name] = _constant_encoding(graph, node)
    return result
