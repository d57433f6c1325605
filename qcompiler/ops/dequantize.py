"""qcompiler.dequantize: integers → float32, (f32(q) − f32(z))·f32(s), as
quantized_decomposed.dequantize_per_tensor. The converter emits it for the program's outputs
and for the inputs of float fallback ops."""
from __future__ import annotations

import numpy as np

from ..fixed_point import dequantize_values
from .registry import OpDef


def reference(q, scale, zp):
    return dequantize_values(q, scale, zp)


def lowering(ctx, node, args, kwargs):
    q, scale, zp = args
    R = ctx.R
    x = ctx.astype(ctx.expr(q), "float32")
    x = ctx.emit(R.subtract(x, ctx.const(np.float32(zp), "float32")))
    return R.multiply(x, ctx.const(np.float32(scale), "float32"))


OP = OpDef(
    name="dequantize", doc="integers → float32 (program outputs, float fallback inputs)",
    schema="(Tensor q, float scale, int zp) -> Tensor", reference=reference, out_dtype="float32", lowering=lowering,
)
