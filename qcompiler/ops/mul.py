"""qcompiler.mul: the elementwise product of two quantized values (or of a value and a
constant tensor, which gets its own symmetric scale): requantize((a − z_a)·(b − z_b)) with
m/2^S ≈ s_a·s_b/s_y. (A product with a Python number is qcompiler.add's scale.)"""
from __future__ import annotations

import numpy as np
import torch

from ..fixed_point import quantize_multiplier, requantize
from ..graph import node_label
from .convert import ConversionError, IntValue, Match
from .registry import OWN, OpDef, Rule, Source

aten = torch.ops.aten


def reference(a, b, a_zp, b_zp, mult, shift, out_zp, lo, hi):
    acc = (np.asarray(a, dtype=np.int64) - a_zp) * (np.asarray(b, dtype=np.int64) - b_zp)
    return requantize(acc, mult, shift, out_zp, lo, hi)


def _constant_operand(cv, const, op) -> IntValue:
    """A constant factor quantized symmetrically to [−127, 127] on its own scale."""
    value = cv.tensor(const).double().numpy() if isinstance(const, torch.fx.Node) else np.array(float(const))
    c_scale = float(np.abs(value).max()) / 127 or 1.0
    cq = np.rint(value / c_scale).astype(np.int64)
    return IntValue(cv.const(cq, f"{op.name}_const"), c_scale, 0, -127, 127, torch.int64)


def convert(cv, m: Match):
    """Q(mul(a, b)) → qcompiler.mul."""
    op, out = m.node, m.out
    a = cv.ints.get(op.args[0]) if isinstance(op.args[0], torch.fx.Node) else None
    b = cv.ints.get(op.args[1]) if isinstance(op.args[1], torch.fx.Node) else None
    if a is None and b is None:
        raise ConversionError(f"{node_label(op)}: neither operand is quantized")
    if a is None:  # the quantized operand comes first
        a, b = b, _constant_operand(cv, op.args[0], op)
    elif b is None:
        b = _constant_operand(cv, op.args[1], op)
    mult, shift = quantize_multiplier(a.scale * b.scale / out.scale)
    return cv.emit(OP.target, (a.node, b.node, a.zp, b.zp, mult, shift, out.zp, out.qmin, out.qmax, out.dtype), m)


def lowering(ctx, node, args, kwargs):
    a, b, a_zp, b_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    acc = ctx.emit(ctx.R.multiply(ctx.centered(ctx.expr(a), a_zp, "int64"), ctx.centered(ctx.expr(b), b_zp, "int64")))
    return ctx.requantize(acc, mult, shift, out_zp, lo, hi, out_dtype)


OP = OpDef(
    name="mul", doc="elementwise product of two quantized values, requantized",
    schema=("(Tensor a, Tensor b, int a_zp, int b_zp, int mult, int shift, int out_zp, int lo, int hi, "
            "ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=9, lowering=lowering,
    sources={aten.mul.Tensor: Source(OWN)},
    rules=(Rule((aten.mul.Tensor,), convert),),
)
