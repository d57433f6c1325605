"""qcompiler.matmul: a[..., M, K] · b[..., K, N] of two quantized values (mm, bmm, matmul):
requantize(Σ (a − z_a)·(b − z_b)) with m/2^S ≈ s_a·s_b/s_y."""
from __future__ import annotations

import numpy as np
import torch

from .. import meta
from ..fixed_point import quantize_multiplier, requantize
from .convert import Match
from .numeric import exact_check
from .registry import OWN, OpDef, Rule, Source

aten = torch.ops.aten
SOURCES = (aten.mm.default, aten.bmm.default, aten.matmul.default)


def reference(a, b, a_zp, b_zp, mult, shift, out_zp, lo, hi):
    ac = np.asarray(a, dtype=np.int64) - a_zp
    bc = np.asarray(b, dtype=np.int64) - b_zp
    exact_check(ac, bc, ac.shape[-1], "matmul")
    acc = np.matmul(ac.astype(np.float64), bc.astype(np.float64)).astype(np.int64)
    return requantize(acc, mult, shift, out_zp, lo, hi)


def convert(cv, m: Match):
    """Q(mm|bmm|matmul(DQ(a), DQ(b))) → qcompiler.matmul."""
    op, out = m.node, m.out
    a, b = cv.int_of(op.args[0], op), cv.int_of(op.args[1], op)
    mult, shift = quantize_multiplier(a.scale * b.scale / out.scale)
    return cv.emit(OP.target, (a.node, b.node, a.zp, b.zp, mult, shift, out.zp, out.qmin, out.qmax, out.dtype), m)


def lowering(ctx, node, args, kwargs):
    a, b, a_zp, b_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    a, b = ctx.expr(a), ctx.expr(b)
    k = ctx.shape(a)[-1]
    ma, mb = ctx.max_abs(a, a_zp), ctx.max_abs(b, b_zp)
    dtype = ctx.int_dtype_for(-max(ma, mb), max(ma, mb))
    ac, bc = ctx.centered(a, a_zp, dtype), ctx.centered(b, b_zp, dtype)
    acc = ctx.emit(ctx.R.matmul(ac, bc, out_dtype=ctx.acc_dtype(ma * mb * k)))
    return ctx.requantize(acc, mult, shift, out_zp, lo, hi, out_dtype)


def macs(program, node, shape) -> int:
    """Output elements × K (K from the first operand's shape)."""
    a = node.args[0].meta.get(meta.VAL)
    return int(np.prod(shape)) * (int(a.shape[-1]) if a is not None else 0) if shape else 0


OP = OpDef(
    name="matmul", doc="matrix product of two quantized values, requantized",
    schema=("(Tensor a, Tensor b, int a_zp, int b_zp, int mult, int shift, int out_zp, int lo, int hi, "
            "ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=9, lowering=lowering,
    sources={t: Source(OWN) for t in SOURCES},
    rules=(Rule(SOURCES, convert),),
    macs=macs, kernel_words=("matmul",),
)
