"""qcompiler.quantize: float → integers at the program's edge, exactly as
quantized_decomposed.quantize_per_tensor (float32): clamp(round_half_even(x·f32(1/s)) + z,
qmin, qmax). The converter emits it for every quantizer of a float value."""
from __future__ import annotations

import numpy as np

from ..fixed_point import quantize_values
from .registry import OpDef


def reference(x, scale, zp, qmin, qmax):
    return quantize_values(x, scale, zp, qmin, qmax)


def lowering(ctx, node, args, kwargs):
    """clamp(round_half_even(x · f32(1/s)) + f32(z), qmin, qmax) in float32, then cast."""
    x, scale, zp, qmin, qmax, dtype = args
    R = ctx.R
    x = ctx.astype(ctx.expr(x), "float32")
    y = ctx.emit(R.round(R.multiply(x, ctx.const(np.float32(1.0 / scale), "float32"))))  # R.round is half to even
    y = ctx.emit(R.add(y, ctx.const(np.float32(zp), "float32")))
    y = ctx.emit(R.minimum(R.maximum(y, ctx.const(qmin, "float32")), ctx.const(qmax, "float32")))
    return R.astype(y, ctx.np_dtype(dtype))


OP = OpDef(
    name="quantize", doc="float32 → integers (the program's input quantizers)",
    schema="(Tensor x, float scale, int zp, int qmin, int qmax, ScalarType dtype) -> Tensor",
    reference=reference, out_dtype=5, lowering=lowering,
)
