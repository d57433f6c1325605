"""The op registry (``registry.py``) and the ops of integer programs, one file each. The list
below is the only table of built-in ops: its order is the order conversion rules are tried
in. To add an op: write its file (docs/custom-op.md) and add one row here, or call
``register_op`` from your own code."""
from __future__ import annotations

import torch

from . import (adaptive_avg_pool2d, adaptive_max_pool2d, add, avg_pool2d, batch_norm, clamp, concat, conv2d, dequantize,
               layout, linear, lut, matmul, max_pool2d, mean, mul, pad, quantize, requantize, upsample_bilinear2d,
               upsample_nearest2d)
from .convert import ConversionError, IntValue, Match, QParams
from .registry import (ACTIVATION, KINDS, OPS, OWN, PASSTHROUGH, SHARED, TORCH_TO_NUMPY, WEIGHTED, OpDef, OpRegistryError, Rule,
                       Source, SourceView, arg_check, find_op, fuses_activations, get_op, keep_whole_ops, op_arg, op_for_target, op_kind, op_name, op_of,
                       register_op, rules_for, source_of)

BUILTIN_OPS = [
    quantize.OP,
    dequantize.OP,
    conv2d.OP,
    linear.OP,
    add.OP,
    mul.OP,
    matmul.OP,
    concat.OP,
    mean.OP,
    avg_pool2d.OP,
    max_pool2d.OP,
    adaptive_avg_pool2d.OP,
    adaptive_max_pool2d.OP,
    batch_norm.OP,
    clamp.OP,
    requantize.OP,
    lut.OP,
    upsample_nearest2d.OP,
    upsample_bilinear2d.OP,
    pad.OP,
    *layout.OPS,
]

for _op in BUILTIN_OPS:
    register_op(_op)

CLAMP_BOUNDS = SourceView("bounds")
"""{clamp-like activation: bounds(node) -> (lo, hi) as Python numbers (None = unbounded)}: a
live view of the registry's sources."""

qc = torch.ops.qcompiler
"""``qc.conv2d.default`` etc.: the torch ops of the integer ops."""

__all__ = ["OPS", "BUILTIN_OPS", "OpDef", "Rule", "Source", "register_op", "get_op", "find_op", "op_for_target", "op_of", "op_kind",
           "source_of", "keep_whole_ops", "rules_for", "fuses_activations", "arg_check", "op_arg", "op_name", "OpRegistryError",
           "ConversionError", "IntValue", "Match", "QParams", "TORCH_TO_NUMPY", "qc", "KINDS",
           "CLAMP_BOUNDS", "WEIGHTED", "ACTIVATION", "OWN", "SHARED", "PASSTHROUGH"]
