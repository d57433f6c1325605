"""qcompiler.adaptive_avg_pool2d: adaptive average pooling (``nn.AdaptiveAvgPool2d``) to any
output size (to 1×1 it is ``qcompiler.mean``). Along each dim, output index i averages the
input window [floor(i·H/Ho), ceil((i+1)·H/Ho)) (PyTorch's start_index/end_index,
``numeric.adaptive_windows``); windows may overlap and differ in length, so the divisor,
the product of the row and column window lengths, varies per output position:

    acc[n, c, i, j] = Σ (q − z_in) over the window (i, j)
    out[n, c, i, j] = requantize(acc, mult[i, j], shift[i, j])      m/2^S ≈ s_in / (div[i, j]·s_out)

``mult``/``shift`` are a per-(i, j) table [Ho, Wo] of ``quantize_multiplier`` pairs (one
element when every window has the same length, e.g. H divisible by Ho). Exact against the
simulation within one step, as every requantize."""
from __future__ import annotations

import numpy as np
import torch

from ..fixed_point import requantize
from ..graph import node_label
from .avg_pool2d import requantize_table, table
from .convert import ConversionError, Match, shape_of
from .numeric import adaptive_reduce, adaptive_windows
from .registry import OpDef, Rule

aten = torch.ops.aten
SOURCES = (aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default)  # their Source row is mean.py's


def reference(x, output_size, in_zp, mult, shift, out_zp, lo, hi):
    total = adaptive_reduce(np.asarray(x, dtype=np.int64) - in_zp, output_size, np.sum)
    return requantize(total, np.asarray(mult), np.asarray(shift), out_zp, lo, hi)


def divisors(shape, output_size) -> np.ndarray:
    """The window lengths' products [Ho, Wo] (int64) for an input of spatial ``shape``."""
    lengths = []
    for size, out in zip(shape, output_size):
        starts, ends = adaptive_windows(int(size), int(out))
        lengths.append(np.asarray(ends) - np.asarray(starts))
    return np.outer(lengths[0], lengths[1]).astype(np.int64)


def convert(cv, m: Match):
    """Q(adaptive_avg_pool2d(DQ(x), (Ho, Wo))) → qcompiler.adaptive_avg_pool2d."""
    op, out = m.node, m.out
    x = cv.int_of(op.args[0], op)
    shape = shape_of(op.args[0])
    if shape is None or len(shape) != 4:
        raise ConversionError(f"{node_label(op)}: adaptive average pooling of an NCHW input with a known shape has an "
                              f"integer form; the input's shape is {shape}")
    output_size = [int(shape[2 + d]) if v is None else int(v) for d, v in enumerate(op.args[1])]
    div = divisors(shape[2:], output_size)
    mult, shift = table(x.scale / (div.astype(np.float64) * out.scale))
    return cv.emit(OP.target, (x.node, output_size, x.zp, cv.const(mult, f"{m.name}_mult"), cv.const(shift, f"{m.name}_shift"),
                               out.zp, out.qmin, out.qmax, out.dtype), m)


def reduce_windows(ctx, x, output_size, reduce):
    """Relax: ``reduce(slice, axis=[axis], keepdims=True)`` (R.sum, R.max) of NCHW ``x``
    over adaptive pooling's windows, rows then columns, each window one strided_slice,
    concatenated: [N, C, Ho, Wo]."""
    R = ctx.R
    for axis, out in ((2, int(output_size[0])), (3, int(output_size[1]))):
        size = ctx.shape(x)[axis]
        if out == size:
            continue  # every window is one element
        parts = [ctx.emit(reduce(ctx.emit(R.strided_slice(x, axes=[axis], begin=[s], end=[e])), axis=[axis], keepdims=True))
                 for s, e in zip(*adaptive_windows(size, out))]
        x = ctx.emit(R.concat(parts, axis=axis)) if len(parts) > 1 else parts[0]
    return x


def lowering(ctx, node, args, kwargs):
    """Window sums of the centered input (int32 when the largest sum provably fits), then
    the per-position requantize."""
    x, output_size, in_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    x = ctx.expr(x)
    _, _, h, w = ctx.shape(x)
    acc = ctx.acc_dtype(ctx.max_abs(x, in_zp) * h * w)
    total = reduce_windows(ctx, ctx.centered(x, in_zp, acc), output_size, ctx.R.sum)
    return requantize_table(ctx, total, mult, shift, out_zp, lo, hi, out_dtype)


OP = OpDef(
    name="adaptive_avg_pool2d", doc="adaptive average pooling to any size, requantized per output position",
    schema=("(Tensor x, int[] output_size, int in_zp, Tensor mult, Tensor shift, int out_zp, int lo, int hi, "
            "ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=8, lowering=lowering,
    rules=(Rule(SOURCES, convert),),
    kernel_words=("sum", "pool"),
)
