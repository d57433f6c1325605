"""qcompiler.requantize: integers to other quantization parameters, with clamp bounds:
clamp(z_y + (((x − z_x)·m + 2^(S−1)) >> S), lo, hi), m/2^S ≈ s_x/s_y.

It computes the clamp-like activations (relu, relu6/hardtanh, clamp) where no conv, linear
or add before them takes them into its own bounds, and a value quantized a second time."""
from __future__ import annotations

import numpy as np
import torch

from ..fixed_point import quantize_multiplier, requantize
from ..graph import node_label
from .convert import ConversionError, Match
from .registry import ACTIVATION, OpDef, Rule, Source, op_arg

aten = torch.ops.aten

# The clip bounds (lo, hi) of each clamp-like activation, as Python numbers (None = unbounded).
BOUNDS = {
    aten.relu.default: lambda n: (0.0, None),
    aten.hardtanh.default: lambda n: (op_arg(n, 1, "min_val", -1.0), op_arg(n, 2, "max_val", 1.0)),
    aten.clamp.default: lambda n: (op_arg(n, 1, "min", None), op_arg(n, 2, "max", None)),
    aten.clamp_min.default: lambda n: (op_arg(n, 1, "min", None), None),
    aten.clamp_max.default: lambda n: (None, op_arg(n, 1, "max", None)),
}
ACTIVATIONS = (*BOUNDS, aten.clamp.Tensor)  # clamp.Tensor: per-channel tensor bounds, fused into a conv/linear only


def reference(x, in_zp, mult, shift, out_zp, lo, hi):
    return requantize(np.asarray(x, dtype=np.int64) - in_zp, mult, shift, out_zp, lo, hi)


def convert_activation(cv, m: Match):
    """Q(act(DQ(x))) for a clamp-like act with nothing to fuse into → qcompiler.requantize
    with the activation's bounds."""
    op, out = m.node, m.out
    x = cv.int_of(op.args[0], op)
    if op.target == aten.clamp.Tensor:
        raise ConversionError(f"{node_label(op)}: a per-channel clamp must follow a conv/linear to be fused")
    lo, hi = cv.bounds([op], out, 1)
    mult, shift = quantize_multiplier(x.scale / out.scale)
    return cv.emit(OP.target, (x.node, x.zp, mult, shift, out.zp, int(lo[0]), int(hi[0]), out.dtype), m)


def lowering(ctx, node, args, kwargs):
    x, in_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    return ctx.requantize(ctx.centered(ctx.expr(x), in_zp, "int64"), mult, shift, out_zp, lo, hi, out_dtype)


OP = OpDef(
    name="requantize", doc="integers to other quantization parameters, clamped (standalone activations)",
    schema="(Tensor x, int in_zp, int mult, int shift, int out_zp, int lo, int hi, ScalarType out_dtype) -> Tensor",
    reference=reference, out_dtype=7, lowering=lowering,
    sources={t: Source(ACTIVATION, bounds=BOUNDS.get(t)) for t in ACTIVATIONS},
    rules=(Rule(ACTIVATIONS, convert_activation),),
)
