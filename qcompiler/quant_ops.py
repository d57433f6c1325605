"""How each ATen op takes part in quantization: one table, read by insert_quantizers (where
the quantizers go) and by the integer conversion (which integer op runs it).

    weighted     conv / linear: int8 weights, int32 accumulation, own output quantizer
    activation   relu / relu6 / hardtanh / clamp: fused into the producer's output quantizer,
                 or (standalone) re-quantized with its input's parameters
    own          add, mul, cat, matmul, and unary ops run as a 256-entry table: own output quantizer
    shared       average pooling / spatial mean: output re-quantized with the input's parameters
    passthrough  layout ops, max pooling, zero padding: integer values flow through unchanged
"""
from __future__ import annotations

import operator

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the quantized_decomposed ops (Q/DQ)

aten = torch.ops.aten

WEIGHTED = "weighted"
ACTIVATION = "activation"
OWN = "own"
SHARED = "shared"
PASSTHROUGH = "passthrough"

LUT_OPS = {
    aten.sigmoid.default, aten.hardswish.default, aten.hardsigmoid.default, aten.gelu.default, aten.tanh.default,
    aten.exp.default, aten.silu.default, aten.leaky_relu.default, aten.elu.default, aten.erf.default,
    aten.softplus.default, aten.mish.default, aten.log.default, aten.sqrt.default, aten.rsqrt.default, aten.neg.default, aten.abs.default,
}

OP_KINDS: dict = {
    aten.convolution.default: WEIGHTED,
    aten.conv2d.default: WEIGHTED,
    aten.linear.default: WEIGHTED,
    aten.relu.default: ACTIVATION,
    aten.hardtanh.default: ACTIVATION,
    aten.clamp.default: ACTIVATION,
    aten.clamp.Tensor: ACTIVATION,
    aten.clamp_min.default: ACTIVATION,
    aten.clamp_max.default: ACTIVATION,
    aten.add.Tensor: OWN,
    aten.sub.Tensor: OWN,
    aten.mul.Tensor: OWN,
    aten.div.Tensor: OWN,
    aten.cat.default: OWN,
    aten.mm.default: OWN,
    aten.bmm.default: OWN,
    aten.matmul.default: OWN,
    **{op: OWN for op in LUT_OPS},
    aten.avg_pool2d.default: SHARED,
    aten.mean.dim: SHARED,
    aten._adaptive_avg_pool2d.default: SHARED,
    aten.adaptive_avg_pool2d.default: SHARED,
    aten.max_pool2d_with_indices.default: PASSTHROUGH,
    aten.max_pool2d.default: PASSTHROUGH,
    aten.constant_pad_nd.default: PASSTHROUGH,
    aten.view.default: PASSTHROUGH,
    aten.reshape.default: PASSTHROUGH,
    aten._unsafe_view.default: PASSTHROUGH,
    aten.permute.default: PASSTHROUGH,
    aten.transpose.int: PASSTHROUGH,
    aten.t.default: PASSTHROUGH,
    aten.clone.default: PASSTHROUGH,
    aten.alias.default: PASSTHROUGH,
    aten.squeeze.dim: PASSTHROUGH,
    aten.squeeze.dims: PASSTHROUGH,
    aten.unsqueeze.default: PASSTHROUGH,
    aten.flatten.using_ints: PASSTHROUGH,
    aten.expand.default: PASSTHROUGH,
    aten.slice.Tensor: PASSTHROUGH,
    aten.select.int: PASSTHROUGH,
    operator.getitem: PASSTHROUGH,
}

# Ops whose integer form exists only for some arguments: a check returning '' if fine,
# or why not (the op then needs a float fallback).
def _pad_check(node) -> str:
    value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0.0)
    return "" if value == 0 else f"constant_pad_nd with value {value} (only zero padding is exact)"


def _div_check(node) -> str:
    divisor = node.args[1]
    return "" if isinstance(divisor, (int, float)) and divisor != 0 else "division by a tensor (only by a non-zero number has an integer form)"


ARG_CHECKS = {aten.constant_pad_nd.default: _pad_check, aten.div.Tensor: _div_check}


def op_arg(node, index: int, name: str, default):
    """Argument ``index`` of a call node, or its keyword ``name``, or ``default``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


# The clip bounds (lo, hi) of each clamp-like activation, as scalars (None = unbounded).
CLAMP_BOUNDS = {
    aten.relu.default: lambda n: (0.0, None),
    aten.hardtanh.default: lambda n: (op_arg(n, 1, "min_val", -1.0), op_arg(n, 2, "max_val", 1.0)),
    aten.clamp.default: lambda n: (op_arg(n, 1, "min", None), op_arg(n, 2, "max", None)),
    aten.clamp_min.default: lambda n: (op_arg(n, 1, "min", None), None),
    aten.clamp_max.default: lambda n: (None, op_arg(n, 1, "max", None)),
}


def op_name(target) -> str:
    """'aten.convolution.default' for an OpOverload, the function name otherwise."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def op_kind(target):
    return OP_KINDS.get(target)
