"""qcompiler.batch_norm: a BatchNorm in inference mode that no conv or linear absorbs (fold_bn
folds the others): ``nn.BatchNorm2d`` alone, after a concat or an add (DenseNet's
pre-activation), BatchNorm1d. Captured as ``getitem(_native_batch_norm_legit_no_training(x,
γ, β, μ, σ², momentum, eps), 0)``. Per channel c (dim 1) it is an affine map
y = a_c·x + b_c with a_c = γ_c/√(σ²_c + eps) and b_c = β_c − a_c·μ_c, so on integers:

    y_q = clamp(z_y + o_c + ((q − z_x)·m_c + 2^(S_c−1)) >> S_c, lo_c, hi_c)

    m_c/2^S_c ≈ a_c·s_x/s_y   (m_c = ±quantize_multiplier(|a_c|·s_x/s_y): the sign of a_c
                               is the sign of m_c; a_c = 0 gives m_c = 0)
    o_c = round_half_even(b_c/s_y)   (the offset on the output's scale, saturated to int32)

Two roundings (the rescale, half up, and the offset), so against the simulation (float32,
one round half to even) it is within one step: |e_1 + e_2 − e| ≤ 1.5 rounds to ≤ 1. A
clamp-like activation after it (BN → ReLU) fuses into per-channel bounds ``lo_c``/``hi_c``.
Kind OWN: the output has its own quantizer (on the getitem)."""
from __future__ import annotations

import numpy as np
import torch

from ..fixed_point import quantize_multipliers, rounding_shift
from ..graph import node_label
from .convert import ConversionError, Match, shape_of
from .numeric import channel_shape
from .registry import OWN, OpDef, Rule, Source, op_arg

aten = torch.ops.aten
SOURCE = aten._native_batch_norm_legit_no_training.default
INT32 = 2**31


def reference(x, in_zp, mult, shift, offset, out_zp, lo, hi):
    x = np.asarray(x, dtype=np.int64)
    nd = x.ndim
    acc = rounding_shift((x - in_zp) * channel_shape(mult, nd, 1), channel_shape(shift, nd, 1))
    return np.clip(acc + channel_shape(offset, nd, 1) + np.int64(out_zp), channel_shape(lo, nd, 1), channel_shape(hi, nd, 1))


def affine(weight, bias, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) float64 per channel: BatchNorm(x) = a·x + b (weight/bias None: 1 and 0)."""
    mean = np.asarray(mean, dtype=np.float64)
    a = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    if weight is not None:
        a = a * np.asarray(weight, dtype=np.float64)
    b = -a * mean + (0.0 if bias is None else np.asarray(bias, dtype=np.float64))
    return a, b


def integer_params(a: np.ndarray, b: np.ndarray, in_scale: float, out_scale: float) -> tuple[np.ndarray, ...]:
    """(mult, shift, offset) int64 per channel for y = a·x + b from scale s_x to s_y
    (module docstring): signed multipliers, offsets on the output's scale."""
    real = a * in_scale / out_scale
    mag = np.where(real == 0, 1.0, np.abs(real))
    mult, shift = quantize_multipliers(mag)
    mult = np.where(real == 0, 0, np.sign(real).astype(np.int64) * mult)
    shift = np.where(real == 0, 0, shift)
    offset = np.clip(np.rint(b / out_scale), -INT32, INT32 - 1).astype(np.int64)
    return mult, shift, offset


def convert(cv, m: Match):
    """Q(act…(getitem(batch_norm(DQ(x), γ, β, μ, σ²), 0))) → qcompiler.batch_norm."""
    op, out = m.node, m.out
    x = cv.int_of(op.args[0], op)
    shape = shape_of(op.args[0])
    if shape is None or len(shape) < 2:
        raise ConversionError(f"{node_label(op)}: BatchNorm of an input with a known shape [N, C, ...] has an integer form; "
                              f"the input's shape is {shape}")
    params = [None if a is None else cv.tensor(a).double().numpy() for a in op.args[1:5]]
    a, b = affine(*params, eps=float(op_arg(op, 6, "eps", 1e-5)))
    mult, shift, offset = integer_params(a, b, x.scale, out.scale)
    lo, hi = cv.bounds(m.acts, out, int(shape[1]))
    return cv.emit(OP.target, (x.node, x.zp, cv.const(mult, f"{m.name}_mult"), cv.const(shift, f"{m.name}_shift"),
                               cv.const(offset, f"{m.name}_offset"), out.zp, cv.const(lo, f"{m.name}_lo"),
                               cv.const(hi, f"{m.name}_hi"), out.dtype), m)


def lowering(ctx, node, args, kwargs):
    """int64: (x − z_x)·m_c, the rounding shift by S_c, + o_c + z_y, per-channel clamp."""
    x, in_zp, mult, shift, offset, out_zp, lo, hi, out_dtype = args
    R = ctx.R
    xc = ctx.centered(ctx.expr(x), in_zp, "int64")
    nd = ctx.ndim(xc)
    acc = ctx.emit(R.multiply(xc, ctx.channel_const(mult, nd, 1)))
    acc = ctx.rescale(acc, shift, nd, 1)
    acc = ctx.emit(R.add(acc, ctx.channel_const(np.asarray(offset, dtype=np.int64) + out_zp, nd, 1)))
    return ctx.astype(ctx.clamp(acc, lo, hi, nd, 1), ctx.np_dtype(out_dtype))


OP = OpDef(
    name="batch_norm", doc="inference BatchNorm not folded into a layer: per-channel multiplier and offset",
    schema=("(Tensor x, int in_zp, Tensor mult, Tensor shift, Tensor offset, int out_zp, Tensor lo, Tensor hi, "
            "ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=8, lowering=lowering,
    sources={SOURCE: Source(OWN, integer_outputs=0)},
    rules=(Rule((SOURCE,), convert, fuses_activations=True),),
)
