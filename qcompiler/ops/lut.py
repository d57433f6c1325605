"""qcompiler.lut: a unary float op on integer values as a table of every input code's
result: out = T[q − qmin], T computed at conversion by running the float op on each code's
real value and quantizing it (exact for any elementwise op: there are only 2^bits inputs)."""
from __future__ import annotations

import numpy as np
import torch

from .convert import Match
from .registry import OWN, OpDef, Rule, Source

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed

SOURCES = (aten.sigmoid.default, aten.hardswish.default, aten.hardsigmoid.default, aten.gelu.default, aten.tanh.default,
           aten.exp.default, aten.silu.default, aten.leaky_relu.default, aten.elu.default, aten.erf.default,
           aten.softplus.default, aten.mish.default, aten.log.default, aten.sqrt.default, aten.rsqrt.default,
           aten.neg.default, aten.abs.default)


def reference(x, table, qmin):
    return np.asarray(table, dtype=np.int64)[np.asarray(x, dtype=np.int64) - qmin]


def convert(cv, m: Match):
    """Q(f(DQ(x))) for an elementwise f → qcompiler.lut with f's table."""
    op, out = m.node, m.out
    x = cv.int_of(op.args[0], op)
    codes = torch.arange(x.qmin, x.qmax + 1, dtype=torch.int64)
    with torch.no_grad():
        real = qd.dequantize_per_tensor.default(codes.to(x.dtype), x.scale, x.zp, x.qmin, x.qmax, x.dtype)
        y = op.target(real, *op.args[1:], **op.kwargs)
        table = qd.quantize_per_tensor.default(y, out.scale, out.zp, out.qmin, out.qmax, out.dtype)
    return cv.emit(OP.target, (x.node, cv.const(table, f"{op.name}_table"), x.qmin), m)


def lowering(ctx, node, args, kwargs):
    """A gather from the table."""
    x, table, qmin = args
    table = np.asarray(table)
    index = ctx.centered(ctx.expr(x), qmin, "int32")
    # every index is in range (q in [qmin, qmax]); "clip" only keeps an out-of-range one from reading outside the table
    return ctx.R.take(ctx.const(table, str(table.dtype)), index, axis=0, mode="clip")


OP = OpDef(
    name="lut", doc="unary elementwise op as a table of every input code's result",
    schema="(Tensor x, Tensor table, int qmin) -> Tensor", reference=reference, out_dtype="table", lowering=lowering,
    sources={t: Source(OWN, keep_whole=True) for t in SOURCES},  # one table, not 3–5 quantized ops
    rules=(Rule(SOURCES, convert),),
    data_args=((1, None),), kernel_words=("take",),
)
