"""Encodings: every quantized tensor's scale, zero point, bits and dtype, read from the
quantized graph (the simulation), as a JSON-ready dict. ``CompiledModel.export`` writes it
next to the library, so a runtime on the device (or another tool) can quantize inputs and
read outputs the way the program does.

    {"activations": {value: {"scale", "zero_point", "bits", "dtype", "qmin", "qmax"}},
     "weights":     {layer: {"scales": [...], "zero_points": [...], "axis", "granularity", "group_size",
                             "bits", "dtype", "qmin", "qmax"}},
     "biases":      {layer: {"scales": [...], "zero_points": [...], "axis", ..., "bits": 32, "dtype": "int32"}}}

A value quantized per channel or per group lists its activation encoding the way weights
are listed (one scale per tensor, channel or group along ``axis``; ``group_size`` indices
per group).
"""
from __future__ import annotations

import math
from typing import Any

import torch.fx as fx

from .qparams import QuantParams, is_dequantize, is_quantize, read_qparams


def _bits(qmin: int, qmax: int) -> int:
    return math.ceil(math.log2(qmax - qmin + 1))


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _range(p: QuantParams) -> dict:
    return {"bits": _bits(p.qmin, p.qmax), "dtype": _dtype_name(p.dtype), "qmin": p.qmin, "qmax": p.qmax}


def _listed(p: QuantParams) -> dict:
    """Scales and zero points as lists, one per tensor, channel or group along ``axis``."""
    return {"scales": p.scale.double().tolist(), "zero_points": p.zero_point.tolist(), "axis": p.axis,
            "granularity": p.granularity, "group_size": p.group_size, **_range(p)}


def activation_encoding(p: QuantParams) -> dict:
    """Per tensor: {"scale", "zero_point", ...}; per channel or group: the listed form."""
    if p.per_tensor:
        scale, zp = p.scalar()
        return {"scale": scale, "zero_point": zp, **_range(p)}
    return _listed(p)


def encodings(graph: fx.GraphModule) -> dict[str, dict]:
    """Every quantized tensor of the quantized graph ``graph``: activations by the name of
    the value they quantize, weights and biases by the name of the layer that uses them.
    Parameters are read with ``qcompiler.qparams.read_qparams``, as the simulation and the
    integer conversion read them."""
    result: dict[str, dict] = {"activations": {}, "weights": {}, "biases": {}}
    for node in graph.graph.nodes:
        if is_quantize(node):
            value = node.args[0]
            name = value.name if isinstance(value, fx.Node) else node.name
            result["activations"][name] = activation_encoding(read_qparams(graph, node))
        elif is_dequantize(node):
            source = node.args[0]
            if not (isinstance(source, fx.Node) and source.op == "get_attr"):
                continue
            for user in node.users:
                position = user.args.index(node) if node in user.args else None
                kind = {1: "weights", 2: "biases"}.get(position)
                if kind is not None:
                    result[kind][user.name] = _listed(read_qparams(graph, node))
    return result
