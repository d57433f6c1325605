"""qcompiler.concat: each part requantized to the output's parameters, then concatenated."""
from __future__ import annotations

import numpy as np
import torch

from ..fixed_point import quantize_multiplier, requantize
from .convert import Match
from .registry import OWN, OpDef, Rule, Source

aten = torch.ops.aten


def reference(xs, dim, zps, mults, shifts, out_zp, lo, hi):
    parts = [requantize(np.asarray(x, dtype=np.int64) - z, m, s, out_zp, lo, hi) for x, z, m, s in zip(xs, zps, mults, shifts)]
    return np.concatenate(parts, axis=dim)


def convert(cv, m: Match):
    """Q(cat([DQ(x)...], dim)) → qcompiler.concat; a part computed from constants (a class
    token expanded to the batch) is quantized with the output's parameters."""
    op, out = m.node, m.out
    parts = [cv.operand(x, op, out) for x in op.args[0]]
    dim = op.args[1] if len(op.args) > 1 else op.kwargs.get("dim", 0)
    pairs = [quantize_multiplier(p.scale / out.scale) for p in parts]
    return cv.emit(OP.target, ([p.node for p in parts], int(dim), [p.zp for p in parts], [mult for mult, _ in pairs],
                               [shift for _, shift in pairs], out.zp, out.qmin, out.qmax, out.dtype), m)


def lowering(ctx, node, args, kwargs):
    xs, dim, zps, mults, shifts, out_zp, lo, hi, out_dtype = args
    parts = [ctx.requantize(ctx.centered(ctx.expr(x), z, "int64"), m, s, out_zp, lo, hi, out_dtype)
             for x, z, m, s in zip(xs, zps, mults, shifts)]
    nd = ctx.ndim(parts[0])
    return ctx.R.concat([ctx.emit(p) for p in parts], axis=dim % nd)


OP = OpDef(
    name="concat", doc="concatenation of values requantized to one set of parameters",
    schema=("(Tensor[] xs, int dim, int[] zps, int[] mults, int[] shifts, int out_zp, int lo, int hi, "
            "ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=8, lowering=lowering,
    sources={aten.cat.default: Source(OWN)},
    rules=(Rule((aten.cat.default,), convert),),
)
