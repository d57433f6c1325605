"""qcompiler.avg_pool2d: average pooling as PyTorch computes it (``nn.AvgPool2d`` with any
``padding``, ``ceil_mode``, ``count_include_pad`` and ``divisor_override``):

    acc[n, c, i, j] = Σ (q − z_in) over window (i, j), clipped to the input
    out[n, c, i, j] = requantize(acc, mult[i, j], shift[i, j])      m/2^S ≈ s_in / (div[i, j]·s_out)

Padding adds nothing to a sum (it pads ``q − z_in`` with 0). The divisor of each window is
PyTorch's (aten/src/ATen/native/cpu/AvgPoolKernel.cpp): ``divisor_override`` if given; with
``count_include_pad`` the window clipped to the *padded* input (a ceil_mode window running
past it counts only its part inside); otherwise the number of input elements in it. The
divisor is a product of a row factor and a column factor, so the multiplier varies per output
position: ``mult``/``shift`` are a per-(i, j) table [Ho, Wo] of ``quantize_multiplier``
pairs, or one element when every window has the same divisor (the plain case: count padding,
no ceil_mode). Exact against the simulation within one step, as every requantize.

The output size follows PyTorch's ``pooling_output_shape`` (``numeric.pool_output_size``);
the windows ceil_mode adds are covered by extra padding at the bottom/right
(``padding`` = [top, left, bottom, right])."""
from __future__ import annotations

import numpy as np
import torch

from ..fixed_point import quantize_multipliers, requantize
from ..graph import node_label
from .convert import ConversionError, Match, pair, shape_of
from .numeric import ceil_extra, padding4, pool_output_size, windows
from .registry import SHARED, OpDef, Rule, Source, op_arg

aten = torch.ops.aten


def reference(x, kernel, stride, padding, in_zp, mult, shift, out_zp, lo, hi):
    win = windows(np.asarray(x, dtype=np.int64) - in_zp, kernel, stride, padding)
    return requantize(win.sum(axis=(-1, -2)), np.asarray(mult), np.asarray(shift), out_zp, lo, hi)


def window_factors(size: int, kernel: int, stride: int, pad: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """(padded, valid) per output index along one dim: the window's length clipped to the
    padded input (``count_include_pad``'s factor) and its number of input elements."""
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    padded = end - start
    valid = np.minimum(end, size) - np.maximum(start, 0)
    return padded, valid


def divisors(shape, kernel, stride, padding, ceil_mode: bool, count_include_pad: bool, divisor_override) -> np.ndarray:
    """PyTorch's divisor of every output position [Ho, Wo] (int64) of an average pool of an
    input of spatial ``shape`` (H, W)."""
    per_dim = []
    for size, k, s, p in zip(shape, kernel, stride, padding):
        out = pool_output_size(size, k, p, s, 1, ceil_mode)
        padded, valid = window_factors(size, k, s, p, out)
        per_dim.append(padded if count_include_pad else valid)
    div = np.outer(per_dim[0], per_dim[1]).astype(np.int64)
    if divisor_override:
        div = np.full_like(div, int(divisor_override))
    return div


def pool_args(node) -> tuple:
    """(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override) of an
    aten.avg_pool2d node."""
    kernel = pair(node.args[1])
    stride = op_arg(node, 2, "stride", None)
    stride = pair(stride) if stride else kernel
    return (kernel, stride, pair(op_arg(node, 3, "padding", 0)), bool(op_arg(node, 4, "ceil_mode", False)),
            bool(op_arg(node, 5, "count_include_pad", True)), op_arg(node, 6, "divisor_override", None))


def table(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-position (mult, shift) arrays of real multipliers [Ho, Wo]; one element each when
    they are all equal."""
    if np.all(reals == reals.flat[0]):
        reals = reals.reshape(-1)[:1]
    mult, shift = quantize_multipliers(reals)
    return mult.reshape(reals.shape), shift.reshape(reals.shape)


def convert(cv, m: Match):
    """Q(avg_pool2d(DQ(x))) → qcompiler.avg_pool2d."""
    op, out = m.node, m.out
    x = cv.int_of(op.args[0], op)
    kernel, stride, padding, ceil_mode, include_pad, divisor = pool_args(op)
    shape = shape_of(op.args[0])
    if shape is None or len(shape) != 4:
        raise ConversionError(f"{node_label(op)}: average pooling of an NCHW input with a known shape has an integer form; "
                              f"the input's shape is {shape}")
    h, w = int(shape[2]), int(shape[3])
    ho, wo = (pool_output_size(n, k, p, s, 1, ceil_mode) for n, k, p, s in zip((h, w), kernel, padding, stride))
    want = shape_of(op)
    if want is not None and tuple(int(d) for d in want[-2:]) != (ho, wo):
        raise ConversionError(f"{node_label(op)}: output size {tuple(want[-2:])} is not PyTorch's pooling_output_shape "
                              f"({ho}, {wo}) as qcompiler computes it")
    div = divisors((h, w), kernel, stride, padding, ceil_mode, include_pad, divisor)
    mult, shift = table(x.scale / (div.astype(np.float64) * out.scale))
    pad4 = [padding[0], padding[1], padding[0] + ceil_extra(h, kernel[0], padding[0], stride[0], 1, ho),
            padding[1] + ceil_extra(w, kernel[1], padding[1], stride[1], 1, wo)]
    return cv.emit(OP.target, (x.node, kernel, stride, pad4, x.zp, cv.const(mult, f"{m.name}_mult"),
                               cv.const(shift, f"{m.name}_shift"), out.zp, out.qmin, out.qmax, out.dtype), m)


def requantize_table(ctx, acc, mult, shift, out_zp: int, lo: int, hi: int, out_dtype):
    """fixed_point.requantize of int ``acc`` [N, C, Ho, Wo] by per-position tables ``mult``,
    ``shift`` ([Ho, Wo], or one element), broadcasting over N and C."""
    R = ctx.R
    mult, shift = np.asarray(mult, dtype=np.int64), np.asarray(shift, dtype=np.int64)
    if mult.size == 1:
        return ctx.requantize(acc, int(mult.reshape(())), int(shift.reshape(())), out_zp, lo, hi, out_dtype)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    acc = ctx.emit(R.multiply(ctx.astype(acc, "int64"), ctx.const(mult, "int64")))
    acc = ctx.emit(R.right_shift(ctx.emit(R.add(acc, ctx.const(half, "int64"))), ctx.const(shift, "int64")))
    if out_zp != 0:
        acc = ctx.emit(R.add(acc, ctx.const(out_zp, "int64")))
    return ctx.astype(ctx.clamp(acc, lo, hi), ctx.np_dtype(out_dtype))


def lowering(ctx, node, args, kwargs):
    """Window sums as a depthwise conv with a kernel of ones over the zero-padded centered
    input (int32 when it provably fits), then the per-position requantize."""
    x, kernel, stride, padding, in_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    x = ctx.expr(x)
    c = ctx.shape(x)[1]
    kh, kw = kernel
    xc = ctx.centered(x, in_zp)
    ones = ctx.const(np.ones((c, 1, kh, kw)), "int8")
    total = ctx.emit(ctx.R.nn.conv2d(xc, ones, strides=list(stride), padding=padding4(padding), groups=c,
                                     out_dtype=ctx.acc_dtype(ctx.max_abs(x, in_zp) * kh * kw)))
    return requantize_table(ctx, total, mult, shift, out_zp, lo, hi, out_dtype)


OP = OpDef(
    name="avg_pool2d", doc="average pooling (PyTorch's divisors), requantized per output position",
    schema=("(Tensor x, int[] kernel, int[] stride, int[] padding, int in_zp, Tensor mult, Tensor shift, int out_zp, "
            "int lo, int hi, ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=10, lowering=lowering,
    sources={aten.avg_pool2d.default: Source(SHARED)},
    rules=(Rule((aten.avg_pool2d.default,), convert),),
    kernel_words=("conv2d", "pool"),
)
