"""qcompiler.mean: the mean over dims (torch.mean, global average pooling):
requantize(Σ (x − z_in) over dims) with m/2^S ≈ s_in / (count·s_out)."""
from __future__ import annotations

import numpy as np
import torch

from ..fixed_point import quantize_multiplier, requantize
from ..graph import node_label
from .convert import ConversionError, Match, shape_of
from .registry import SHARED, OpDef, Rule, Source

aten = torch.ops.aten
ADAPTIVE = (aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default)


def reference(x, dims, keepdim, in_zp, mult, shift, out_zp, lo, hi):
    total = (np.asarray(x, dtype=np.int64) - in_zp).sum(axis=tuple(dims), keepdims=keepdim)
    return requantize(total, mult, shift, out_zp, lo, hi)


def convert(cv, m: Match):
    """Q(mean(DQ(x), dims) | adaptive_avg_pool2d(DQ(x), 1)) → qcompiler.mean (declines
    adaptive pooling to other sizes: adaptive_avg_pool2d.py)."""
    op, out = m.node, m.out
    is_mean = op.target == aten.mean.dim
    if not is_mean and list(op.args[1]) != [1, 1]:
        return None  # other sizes: qcompiler.adaptive_avg_pool2d
    x = cv.int_of(op.args[0], op)
    shape = shape_of(op.args[0])
    dims = list(op.args[1]) if is_mean else [-2, -1]
    keepdim = bool(op.args[2]) if is_mean and len(op.args) > 2 else not is_mean
    if shape is None:
        raise ConversionError(f"{node_label(op)}: the input's shape is unknown")
    count = int(np.prod([int(shape[d]) for d in dims]))
    mult, shift = quantize_multiplier(x.scale / (count * out.scale))
    return cv.emit(OP.target, (x.node, dims, keepdim, x.zp, mult, shift, out.zp, out.qmin, out.qmax, out.dtype), m)


def lowering(ctx, node, args, kwargs):
    x, dims, keepdim, in_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    xc = ctx.centered(ctx.expr(x), in_zp, "int64")
    nd = ctx.ndim(xc)
    total = ctx.emit(ctx.R.sum(xc, axis=[d % nd for d in dims], keepdims=bool(keepdim)))
    return ctx.requantize(total, mult, shift, out_zp, lo, hi, out_dtype)


OP = OpDef(
    name="mean", doc="mean over dims (global average pooling), requantized",
    schema=("(Tensor x, int[] dims, bool keepdim, int in_zp, int mult, int shift, int out_zp, int lo, int hi, "
            "ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=9, lowering=lowering,
    sources={aten.mean.dim: Source(SHARED), **{t: Source(SHARED) for t in ADAPTIVE}},
    rules=(Rule((aten.mean.dim, *ADAPTIVE), convert),),
    kernel_words=("sum",),
)
