"""qcompiler.upsample_bilinear2d: bilinear upsampling (``nn.Upsample(mode="bilinear")``,
``F.interpolate(mode="bilinear")``, align_corners False or True) of NCHW integer values with
fixed-point weights (docs/semantics.md, "Bilinear upsampling"):

    t[n, c, i, w]   = Σ_k row_w[k, i] · (x[n, c, rows[k, i], w] − z_x)        k = 0, 1
    acc[n, c, i, j] = Σ_l col_w[l, j] · t[n, c, i, cols[l, j]]              l = 0, 1
    out = requantize(acc)   with M = s_x / (2^(2F) · s_y)

Per output row i (and column j likewise): the source coordinate ``src`` by torch's rule
(``area_pixel_compute_source_index``), rows = (i0, i1) = (floor(src), min(i0 + 1, H − 1)),
row_w = (2^F − w1, w1) with w1 = round_half_even((src − i0)·2^F), F = ``FRACTION_BITS``.
The weights of each axis sum to 2^F exactly, so a constant input stays exact. Its output
quantizer shares the input's parameters (kind "shared", like average pooling); the
simulation interpolates in float32, and the two are within one step (the weight error is
at most 2^−(F+1) per axis, a few hundredths of a step on 8-bit values)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..fixed_point import quantize_multiplier, requantize
from ..graph import node_label
from .convert import ConversionError, Match, shape_of
from .registry import SHARED, OpDef, Rule, Source, op_arg

aten = torch.ops.aten
SOURCES = (aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default)
FRACTION_BITS = 11
"""F: the interpolation weights are multiples of 2^−F (|acc| ≤ 255·2^22 < 2^31 on 8-bit values)."""


def axis_weights(n_in: int, n_out: int, align_corners: bool, scale: Optional[float],
                 bits: int = FRACTION_BITS) -> tuple[np.ndarray, np.ndarray]:
    """(index [2, n_out], weight [2, n_out]) int64 along one axis: the two source indices of
    each output position and their weights (summing to 2^bits), by torch's source-index
    rule computed in float64: align_corners: src = dst·(n_in − 1)/(n_out − 1) (0 if
    n_out = 1); else src = max((dst + 0.5)·r − 0.5, 0) with r = 1/scale if a scale factor
    was given, else n_in/n_out."""
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        ratio = 1.0 / scale if scale is not None and scale > 0 else n_in / n_out
        src = np.maximum((dst + 0.5) * ratio - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.rint(np.clip(src - i0, 0.0, 1.0) * (1 << bits)).astype(np.int64)
    return np.stack([i0, i1]), np.stack([(1 << bits) - w1, w1])


def reference(x, rows, row_w, cols, col_w, in_zp, mult, shift, out_zp, lo, hi):
    xc = np.asarray(x, dtype=np.int64) - in_zp
    rows, row_w, cols, col_w = (np.asarray(a, dtype=np.int64) for a in (rows, row_w, cols, col_w))
    t = xc[:, :, rows[0], :] * row_w[0][:, None] + xc[:, :, rows[1], :] * row_w[1][:, None]
    acc = t[:, :, :, cols[0]] * col_w[0] + t[:, :, :, cols[1]] * col_w[1]
    return requantize(acc, mult, shift, out_zp, lo, hi)


def _align_and_scales(node) -> tuple[bool, list]:
    """(align_corners, [scale_h, scale_w]) of an upsample_bilinear2d node (.vec or .default)."""
    align = bool(op_arg(node, 2, "align_corners", False))
    if node.target == aten.upsample_bilinear2d.vec:
        factors = op_arg(node, 3, "scale_factors", None)
        return align, list(factors) if factors else [None, None]
    return align, [op_arg(node, 3, "scales_h", None), op_arg(node, 4, "scales_w", None)]


def reduced_multiplier(mult: int, shift: int) -> tuple[int, int]:
    """(m, S) with the powers of two they share divided out: the same rescale exactly
    ((a·m + 2^(S−1)) >> S is unchanged), with a smaller product a·m."""
    while shift > 0 and mult % 2 == 0:
        mult, shift = mult // 2, shift - 1
    return mult, shift


def convert(cv, m: Match):
    """Q(upsample_bilinear2d(DQ(x))) → qcompiler.upsample_bilinear2d."""
    op, out = m.node, m.out
    x = cv.int_of(op.args[0], op)
    shape_in, shape_out = shape_of(op.args[0]), shape_of(op)
    if shape_in is None or shape_out is None or len(shape_in) != 4:
        raise ConversionError(f"{node_label(op)}: bilinear upsampling of an NCHW tensor with known shapes has an integer "
                              f"form; the shapes are {shape_in} → {shape_out}")
    align, scales = _align_and_scales(op)
    rows, row_w = axis_weights(int(shape_in[2]), int(shape_out[2]), align, scales[0])
    cols, col_w = axis_weights(int(shape_in[3]), int(shape_out[3]), align, scales[1])
    mult, shift = reduced_multiplier(*quantize_multiplier(x.scale / (out.scale * (1 << (2 * FRACTION_BITS)))))
    reach = max(abs(x.qmin - x.zp), abs(x.qmax - x.zp)) << (2 * FRACTION_BITS)
    if reach * mult >= 2**62:
        raise ConversionError(f"{node_label(op)}: bilinear upsampling of values in [{x.qmin}, {x.qmax}] to another scale "
                              f"would overflow int64 in the fixed-point rescale; it has no integer form for them yet")
    name = op.name
    return cv.emit(OP.target, (x.node, cv.const(rows, f"{name}_rows"), cv.const(row_w, f"{name}_row_w"),
                               cv.const(cols, f"{name}_cols"), cv.const(col_w, f"{name}_col_w"), x.zp, mult, shift,
                               out.zp, out.qmin, out.qmax, out.dtype), m)


def lowering(ctx, node, args, kwargs):
    """Two gathers and weighted sums (rows along H, then columns along W) in int32 where it
    provably fits, then the requantize in int64."""
    x, rows, row_w, cols, col_w, in_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    R = ctx.R
    x = ctx.expr(x)
    rows, row_w, cols, col_w = (np.asarray(a, dtype=np.int64) for a in (rows, row_w, cols, col_w))
    reach = ctx.max_abs(x, in_zp)
    t_dtype = ctx.acc_dtype(reach << FRACTION_BITS)
    acc_dtype = ctx.acc_dtype(reach << (2 * FRACTION_BITS))
    xc = ctx.centered(x, in_zp, t_dtype)

    def weighted(value, index, weight, axis, shape, dtype):
        parts = [ctx.emit(R.multiply(ctx.emit(R.take(value, ctx.const(index[k], "int32"), axis=axis)),
                                     ctx.const(weight[k].reshape(shape), dtype))) for k in range(2)]
        return ctx.emit(R.add(*parts))

    t = weighted(xc, rows, row_w, 2, (1, 1, -1, 1), t_dtype)
    acc = weighted(ctx.astype(t, acc_dtype), cols, col_w, 3, (1, 1, 1, -1), acc_dtype)
    return ctx.requantize(acc, mult, shift, out_zp, lo, hi, out_dtype)


def macs(program, node, shape) -> int:
    """Four multiplies per output element (two per axis)."""
    return 4 * int(np.prod(shape)) if shape else 0


OP = OpDef(
    name="upsample_bilinear2d", doc="bilinear upsampling of NCHW integer values, fixed-point weights, requantized",
    schema=("(Tensor x, Tensor rows, Tensor row_w, Tensor cols, Tensor col_w, int in_zp, int mult, int shift, "
            "int out_zp, int lo, int hi, ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=11, lowering=lowering,
    sources={t: Source(SHARED, keep_whole=True) for t in SOURCES},
    rules=(Rule(SOURCES, convert),),
    macs=macs,
)
