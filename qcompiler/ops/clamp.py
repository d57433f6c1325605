"""qcompiler.clamp: integer values clamped to per-channel bounds along ``axis`` (bounds as
tensors; a scalar broadcasts)."""
from __future__ import annotations

import numpy as np

from .numeric import channel_shape
from .registry import OpDef


def reference(x, lo, hi, axis: int):
    x = np.asarray(x, dtype=np.int64)
    return np.clip(x, channel_shape(lo, x.ndim, axis), channel_shape(hi, x.ndim, axis))


def lowering(ctx, node, args, kwargs):
    x, lo, hi, axis = args
    x = ctx.expr(x)
    dtype = ctx.dtype(x)
    y = ctx.clamp(ctx.astype(x, "int64"), lo, hi, ctx.ndim(x), axis)
    return ctx.astype(y, dtype)


OP = OpDef(
    name="clamp", doc="integer values clamped to per-channel bounds",
    schema="(Tensor x, Tensor lo, Tensor hi, int axis) -> Tensor", reference=reference, out_dtype="input", lowering=lowering,
)
