"""qcompiler.conv2d: a 2-d convolution (any stride, padding, dilation, groups) of int8/uint8
values with int8 weights, int32 bias and a per-channel requantize epilogue with fused clamp
bounds:

    acc[n,o,y,x] = Σ (x − z_x)·w + bias[o]     (padding of x − z_x by 0, i.e. of x by z_x)
    out = clamp(z_y + ((acc·m[o] + 2^(S[o]−1)) >> S[o]), lo[o], hi[o])

A 1-d convolution (``nn.Conv1d``, weight [O, C/g, k]) is the 2-d one of height 1: its
input unsqueezed to [N, C, 1, L], the weight viewed as [O, C/g, 1, k], stride/padding/
dilation (1, s), (0, p), (1, d), and the result squeezed back to [N, O, L'] (so the host
and arm kernels serve it too; asymmetric "same" padding comes as a zero-point
``constant_pad_nd`` before it).

Source: Jacob et al. 2018 §2.3; fixed point: qcompiler/fixed_point.py (docs/semantics.md)."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ..fixed_point import requantize
from ..graph import get_tensor, node_label
from .convert import ConversionError, Match, pair
from .numeric import channel_shape, exact_check, windows
from .registry import WEIGHTED, OpDef, Rule, Source
from .weighted import DATA_ARGS, bounded_accumulator, weighted_operands

aten = torch.ops.aten


def reference(x, w, bias, x_zp, stride, padding, dilation, groups, mult, shift, out_zp, lo, hi):
    xc = np.asarray(x, dtype=np.int64) - x_zp
    w = np.asarray(w, dtype=np.int64)
    n = xc.shape[0]
    o, cg, kh, kw = w.shape
    win = windows(xc, (kh, kw), stride, padding, dilation)  # [n, c, ho, wo, kh, kw]
    ho, wo = win.shape[2], win.shape[3]
    exact_check(xc, w, cg * kh * kw, "conv2d")
    og = o // groups
    if cg == 1 and og == 1:  # depthwise: one filter per channel
        acc = np.einsum("nchwij,cij->nchw", win.astype(np.float64), w[:, 0].astype(np.float64), optimize=True)
    else:
        cols = win.reshape(n, groups, cg, ho, wo, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6).reshape(n, groups, ho * wo, cg * kh * kw)
        wg = w.reshape(groups, og, cg * kh * kw).astype(np.float64)
        acc = np.matmul(cols.astype(np.float64), wg.transpose(0, 2, 1))  # [n, g, ho*wo, og]
        acc = acc.transpose(0, 1, 3, 2).reshape(n, o, ho, wo)
    acc = acc.astype(np.int64) + channel_shape(bias, 4, 1)
    return requantize(acc, channel_shape(mult, 4, 1), channel_shape(shift, 4, 1), out_zp, channel_shape(lo, 4, 1),
                      channel_shape(hi, 4, 1))


def _conv_args(node) -> tuple:
    """(stride, padding, dilation, groups) of an aten.convolution / aten.conv2d node."""
    a = node.args
    if node.target == aten.convolution.default:
        if a[6]:
            raise ConversionError(f"{node_label(node)}: transposed convolution has no integer form yet")
        return a[3], a[4], a[5], a[8]
    return (a[3] if len(a) > 3 else 1), (a[4] if len(a) > 4 else 0), (a[5] if len(a) > 5 else 1), (a[6] if len(a) > 6 else 1)


def convert(cv, m: Match):
    """Q(act…(conv(DQ(x), DQ(w), b))) → qcompiler.conv2d (a 1-d conv: unsqueeze → conv2d of
    height 1 → squeeze)."""
    stride, padding, dilation, groups = _conv_args(m.node)
    if _weight_rank(cv, m.node) == 3:
        if isinstance(padding, str):
            raise ConversionError(f"{node_label(m.node)}: padding {padding!r} of a 1-d convolution has no integer form yet")
        ops = weighted_operands(cv, m, weight_layout=lambda w: w.unsqueeze(2))
        x = cv.emit_for(m.node, aten.unsqueeze.default, (ops.x.node, 2), f"{m.name}_2d")
        geometry = ([1, _one(stride)], [0, _one(padding)], [1, _one(dilation)])
        conv = cv.emit_for(m.node, OP.target, (x, *ops.common, *geometry, int(groups), *ops.epilogue), m.name)
        return cv.emit_for(m.q, aten.squeeze.dims, (conv, [2]), f"{m.name}_1d")
    ops = weighted_operands(cv, m)
    if len(ops.w.shape) != 4:
        raise ConversionError(f"{node_label(m.node)}: only 1-d and 2-d convolution have an integer form yet "
                              f"(weight {tuple(ops.w.shape)})")
    return cv.emit(OP.target, (ops.x.node, *ops.common, pair(stride), pair(padding), pair(dilation), int(groups), *ops.epilogue), m)


def _weight_rank(cv, node) -> int:
    """The rank of a conv's quantized weight (DQ(constant)); 0 if it is not one."""
    w = node.args[1]
    if isinstance(w, fx.Node) and w.args and isinstance(w.args[0], fx.Node) and w.args[0].op == "get_attr":
        return cv.tensor(w.args[0]).dim()
    return 0


def _one(v) -> int:
    """A 1-d conv's stride/padding/dilation (an int or a 1-sequence) as an int."""
    return int(v) if isinstance(v, int) else int(list(v)[0])


def lowering(ctx, node, args, kwargs):
    """relax conv2d of x − z_x (int16) into int32 where it provably fits, then bias and
    requantize in int64: FuseOps makes one primfunc of it that a schedule can find."""
    x, w, bias, x_zp, stride, padding, dilation, groups, mult, shift, out_zp, lo, hi, out_dtype = args
    x = ctx.expr(x)
    w = np.asarray(w)
    o, cg, kh, kw = w.shape
    xc = ctx.centered(x, x_zp)
    acc = ctx.emit(ctx.R.nn.conv2d(xc, ctx.const(w, str(w.dtype)), strides=list(stride),
                                   padding=[padding[0], padding[1], padding[0], padding[1]], dilation=list(dilation),
                                   groups=int(groups), out_dtype=bounded_accumulator(ctx, x, x_zp, w, cg * kh * kw)))
    acc = ctx.astype(acc, "int64")
    acc = ctx.emit(ctx.R.add(acc, ctx.channel_const(bias, 4, 1)))
    return ctx.requantize(acc, mult, shift, out_zp, lo, hi, out_dtype, axis=1)


def macs(program, node, shape) -> int:
    """Output elements × (C/groups)·kh·kw."""
    return int(np.prod(shape)) * int(np.prod(get_tensor(program, node.args[1]).shape[1:])) if shape else 0


OP = OpDef(
    name="conv2d", doc="2-d convolution with int32 accumulation and a per-channel requantize epilogue",
    schema=("(Tensor x, Tensor w, Tensor bias, int x_zp, int[] stride, int[] padding, int[] dilation, int groups, "
            "Tensor mult, Tensor shift, int out_zp, Tensor lo, Tensor hi, ScalarType out_dtype) -> Tensor"),
    reference=reference, out_dtype=13, lowering=lowering,
    sources={aten.convolution.default: Source(WEIGHTED), aten.conv2d.default: Source(WEIGHTED)},
    rules=(Rule((aten.convolution.default, aten.conv2d.default), convert, fuses_activations=True),),
    macs=macs, data_args=DATA_ARGS, kernel_words=("conv2d",),
)
