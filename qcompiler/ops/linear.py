"""qcompiler.linear: x[..., K] · w[O, K]ᵀ of int8/uint8 values with int8 weights, int32
bias and a per-output-channel requantize epilogue with fused clamp bounds (as conv2d, with
the channel on the last axis). Source: Jacob et al. 2018 §2.3."""
from __future__ import annotations

import numpy as np
import torch

from ..fixed_point import requantize
from ..graph import get_tensor
from .convert import Match
from .numeric import channel_shape, exact_check
from .registry import WEIGHTED, OpDef, Rule, Source
from .weighted import DATA_ARGS, bounded_accumulator, weighted_operands

aten = torch.ops.aten


def reference(x, w, bias, x_zp, mult, shift, out_zp, lo, hi):
    xc = np.asarray(x, dtype=np.int64) - x_zp
    w = np.asarray(w, dtype=np.int64)
    exact_check(xc, w, w.shape[1], "linear")
    acc = np.matmul(xc.astype(np.float64), w.T.astype(np.float64)).astype(np.int64) + np.asarray(bias, dtype=np.int64)
    nd = acc.ndim
    return requantize(acc, channel_shape(mult, nd, nd - 1), channel_shape(shift, nd, nd - 1), out_zp,
                      channel_shape(lo, nd, nd - 1), channel_shape(hi, nd, nd - 1))


def convert(cv, m: Match):
    """Q(act…(linear(DQ(x), DQ(w), b))) → qcompiler.linear."""
    ops = weighted_operands(cv, m)
    return cv.emit(OP.target, (ops.x.node, *ops.common, *ops.epilogue), m)


def lowering(ctx, node, args, kwargs):
    x, w, bias, x_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    x = ctx.expr(x)
    w = np.asarray(w)
    xc = ctx.centered(x, x_zp)
    wt = ctx.const(np.ascontiguousarray(w.T).astype(ctx.dtype(xc)), ctx.dtype(xc))  # [K, O], same dtype as xc
    acc = ctx.emit(ctx.R.matmul(xc, wt, out_dtype=bounded_accumulator(ctx, x, x_zp, w, w.shape[1])))
    acc = ctx.astype(acc, "int64")
    nd = ctx.ndim(acc)
    acc = ctx.emit(ctx.R.add(acc, ctx.channel_const(bias, nd, nd - 1)))
    return ctx.requantize(acc, mult, shift, out_zp, lo, hi, out_dtype, axis=nd - 1)


def macs(program, node, shape) -> int:
    """Output elements × K."""
    return int(np.prod(shape)) * int(get_tensor(program, node.args[1]).shape[1]) if shape else 0


OP = OpDef(
    name="linear", doc="fully connected layer with int32 accumulation and a per-channel requantize epilogue",
    schema=("(Tensor x, Tensor w, Tensor bias, int x_zp, Tensor mult, Tensor shift, int out_zp, Tensor lo, Tensor hi, "
            "ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=9, lowering=lowering,
    sources={aten.linear.default: Source(WEIGHTED, keep_whole=True)},  # its weight stays recognisable
    rules=(Rule((aten.linear.default,), convert, fuses_activations=True),),
    macs=macs, data_args=DATA_ARGS, kernel_words=("linear", "matmul"),
)
