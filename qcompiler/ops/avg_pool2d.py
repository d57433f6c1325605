"""qcompiler.avg_pool2d: window sums of (x − z_in) (zero padding counted in the divisor),
requantized by m/2^S ≈ s_in / (kh·kw·s_out) (or by the divisor_override)."""
from __future__ import annotations

import numpy as np
import torch

from ..fixed_point import quantize_multiplier, requantize
from ..graph import node_label
from .convert import ConversionError, Match, pair
from .numeric import windows
from .registry import SHARED, OpDef, Rule, Source

aten = torch.ops.aten


def reference(x, kernel, stride, padding, in_zp, mult, shift, out_zp, lo, hi):
    win = windows(np.asarray(x, dtype=np.int64) - in_zp, kernel, stride, padding)
    return requantize(win.sum(axis=(-1, -2)), mult, shift, out_zp, lo, hi)


def convert(cv, m: Match):
    """Q(avg_pool2d(DQ(x))) → qcompiler.avg_pool2d."""
    op, out, a = m.node, m.out, m.node.args
    x = cv.int_of(a[0], op)
    kernel = pair(a[1])
    stride = pair(a[2]) if len(a) > 2 and a[2] else kernel
    padding = pair(a[3]) if len(a) > 3 else [0, 0]
    ceil_mode = len(a) > 4 and a[4]
    include_pad = a[5] if len(a) > 5 else True
    divisor = a[6] if len(a) > 6 else None
    if ceil_mode or (not include_pad and any(padding)):
        raise ConversionError(f"{node_label(op)}: average pooling with ceil_mode or count_include_pad=False has no integer form yet")
    mult, shift = quantize_multiplier(x.scale / ((divisor or kernel[0] * kernel[1]) * out.scale))
    return cv.emit(OP.target, (x.node, kernel, stride, padding, x.zp, mult, shift, out.zp, out.qmin, out.qmax, out.dtype), m)


def lowering(ctx, node, args, kwargs):
    """Window sums as a depthwise conv with a kernel of ones (int32 when it provably fits)."""
    x, kernel, stride, padding, in_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    x = ctx.expr(x)
    c = ctx.shape(x)[1]
    (kh, kw), (ph, pw) = kernel, padding
    xc = ctx.centered(x, in_zp)
    ones = ctx.const(np.ones((c, 1, kh, kw)), "int8")
    total = ctx.emit(ctx.R.nn.conv2d(xc, ones, strides=list(stride), padding=[ph, pw, ph, pw], groups=c,
                                     out_dtype=ctx.acc_dtype(ctx.max_abs(x, in_zp) * kh * kw)))
    return ctx.requantize(total, mult, shift, out_zp, lo, hi, out_dtype)


OP = OpDef(
    name="avg_pool2d", doc="average pooling (zero padding counted), requantized",
    schema=("(Tensor x, int[] kernel, int[] stride, int[] padding, int in_zp, int mult, int shift, int out_zp, int lo, "
            "int hi, ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=10, lowering=lowering,
    sources={aten.avg_pool2d.default: Source(SHARED)},
    rules=(Rule((aten.avg_pool2d.default,), convert),),
    kernel_words=("conv2d", "pool"),
)
