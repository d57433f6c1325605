"""qcompiler.add: a + b, a − b, and x·c or x/c for a Python number c, with one rounding:

    out = clamp(z + (((a − z_a)·m_a + (b − z_b)·m_b + 2^(S−1)) >> S), lo, hi)

m_a/2^S ≈ s_a/s_y, m_b/2^S ≈ ±α·s_b/s_y (a subtraction has a negative m_b); a scale by a
number passes its input twice with m_b = 0. Clamp-like activations after an add are fused
into lo, hi. (Same form as TFLite's quantized ADD, with a single shift.)"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..fixed_point import rounding_shift
from .convert import Match
from .registry import OWN, OpDef, Rule, Source

aten = torch.ops.aten
MAX_SHIFT = 62


def reference(a, b, a_zp, b_zp, a_mult, b_mult, shift, out_zp, lo, hi):
    acc = (np.asarray(a, dtype=np.int64) - a_zp) * np.int64(a_mult) + (np.asarray(b, dtype=np.int64) - b_zp) * np.int64(b_mult)
    return np.clip(rounding_shift(acc, shift) + out_zp, lo, hi)


def shift_for(largest: float) -> int:
    """The right shift S in [0, 62] that keeps |m| = |real|·2^S below 2^31 for every real up
    to ``largest`` in magnitude."""
    return min(max(30 - math.frexp(abs(largest))[1] + 1, 0), MAX_SHIFT)


def convert_add(cv, m: Match):
    """Q(act…(add|sub(a, b))) with a, b quantized values or constants → qcompiler.add."""
    op, out = m.node, m.out
    a = cv.operand(op.args[0], op, out)
    b = cv.operand(op.args[1], op, out)
    alpha = float(op.kwargs.get("alpha", op.args[2] if len(op.args) > 2 else 1.0))
    sign = -1.0 if op.target == aten.sub.Tensor else 1.0
    ra, rb = a.scale / out.scale, sign * alpha * b.scale / out.scale
    shift = shift_for(max(abs(ra), abs(rb)))
    lo, hi = cv.bounds(m.acts, out, 1)
    return cv.emit(OP.target, (a.node, b.node, a.zp, b.zp, int(round(ra * 2**shift)), int(round(rb * 2**shift)), shift,
                               out.zp, int(lo[0]), int(hi[0]), out.dtype), m)


def convert_scale_by_number(cv, m: Match):
    """Q(x·c | x/c) for a Python number c: q = z + round((q_x − z_x)·s_x·c/s_y), the second
    operand's multiplier 0 (c may be negative). Declines if neither operand is a number."""
    op, out = m.node, m.out
    if not any(isinstance(a, (int, float)) for a in op.args[:2]):
        return None
    x_arg, c = (op.args[0], op.args[1]) if isinstance(op.args[1], (int, float)) else (op.args[1], op.args[0])
    x = cv.int_of(x_arg, op)
    real = x.scale * (float(c) if op.target in (aten.mul.Tensor, aten.mul.Scalar) else 1.0 / float(c)) / out.scale
    shift = 0 if real == 0 else shift_for(real)
    return cv.emit(OP.target, (x.node, x.node, x.zp, x.zp, int(round(real * 2**shift)), 0, shift, out.zp, out.qmin, out.qmax,
                               out.dtype), m)


def _div_check(node) -> str:
    divisor = node.args[1]
    return "" if isinstance(divisor, (int, float)) and divisor != 0 else "division by a tensor (only by a non-zero number has an integer form)"


def lowering(ctx, node, args, kwargs):
    a, b, a_zp, b_zp, a_mult, b_mult, shift, out_zp, lo, hi, out_dtype = args
    R = ctx.R
    acc = ctx.emit(R.multiply(ctx.centered(ctx.expr(a), a_zp, "int64"), ctx.const(a_mult, "int64")))
    if b_mult != 0:  # (b − z_b)·0 adds nothing (a scale-by-number node passes m_b = 0)
        bterm = ctx.emit(R.multiply(ctx.centered(ctx.expr(b), b_zp, "int64"), ctx.const(b_mult, "int64")))
        acc = ctx.emit(R.add(acc, bterm))
    elif ctx.shape(ctx.expr(b)) != ctx.shape(acc):  # keep numpy's broadcast shape
        acc = ctx.emit(R.add(acc, R.multiply(ctx.centered(ctx.expr(b), b_zp, "int64"), ctx.const(0, "int64"))))
    acc = ctx.rescale(acc, shift)
    if out_zp != 0:
        acc = ctx.emit(R.add(acc, ctx.const(out_zp, "int64")))
    return ctx.astype(ctx.clamp(acc, lo, hi), ctx.np_dtype(out_dtype))


OP = OpDef(
    name="add", doc="a ± b and x·c, x/c by a number, rescaled with one rounding (fused clamp bounds)",
    schema=("(Tensor a, Tensor b, int a_zp, int b_zp, int a_mult, int b_mult, int shift, int out_zp, int lo, int hi, "
            "ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=10, lowering=lowering,
    sources={aten.add.Tensor: Source(OWN), aten.sub.Tensor: Source(OWN), aten.div.Tensor: Source(OWN, check=_div_check),
             aten.mul.Scalar: Source(OWN), aten.div.Scalar: Source(OWN, check=_div_check)},
    rules=(Rule((aten.add.Tensor, aten.sub.Tensor), convert_add, fuses_activations=True),
           Rule((aten.mul.Tensor, aten.div.Tensor, aten.mul.Scalar, aten.div.Scalar), convert_scale_by_number)),
)
