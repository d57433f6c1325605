"""Exact, fast int8 kernels for the x86 host (AVX2 + FMA, no AVX-512, no VNNI): conv2d,
depthwise conv2d and linear, each fused with the fixed-point requantize of
``qcompiler/fixed_point.py``, as TVM 0.27 TIR PrimFuncs for ``relax.call_tir``. Bit-exact
with the op references ``qcompiler.ops.conv2d`` / ``linear`` (tests/test_x86_int8.py).

API (the same as ``kernels/arm.py``'s, so that a target lowers with either)
    func, consts = conv2d_requant_primfunc(x_shape, x_dtype, w, bias, x_zp, stride, padding,
                                           dilation, groups, mult, shift, out_zp, lo, hi,
                                           out_dtype, target, threads=None)
    func, consts = linear_requant_primfunc(x_shape, x_dtype, w, bias, x_zp, mult, shift,
                                           out_zp, lo, hi, out_dtype, target)
    y = emit_call_tir(bb, func, consts, x)        # in a relax.BlockBuilder dataflow block

``func`` is destination-passing: ``func(x, *consts, out)`` with ``x`` and ``out`` in the
program's own layout (NCHW for conv2d, [..., K] → [..., O] for linear). ``consts`` are
numpy arrays computed once here (packed weights and the requantize rows of
``kernels/requant.py``), handed in as Relax constants. ``kernel_info(func)`` gives the
chosen kernel and tiling. ``ExactnessError`` (a ValueError) means "keep the default
lowering". ``threads``: the TVM runtime thread count the tiling is planned for.

Kernels (``kernel_info(func)["kind"]``): "pointwise" and "im2col" (``x86_gemm_conv.py``),
"depthwise" (``x86_depthwise.py``), "dense" (the shared loop nest of ``dense.py`` with
``DENSE``, this ISA's description: int16 pairs, ``vpmaddwd``, the epilogue),
"pointwise_u8s8" (``x86_u8s8.py``, opt-in); the requantize epilogue is
``x86_epilogue.py``, the instruction steps ``targets/intrinsics/x86_avx2.py``'s. Exactness: every product is
formed exactly and summed in int32 (``kernels/contract.py``); the input zero point is
folded into the bias.

Speed (bench/x86_kernels.py, EfficientNet-Lite0's 33 distinct conv/linear shapes, 1 thread,
Zen 3 at about 3 GHz): about 7.2-7.6 ms for all its conv/linear layers together (385 M
MACs), against about 150 ms for TVM's default build of the same ops and 8.1-8.4 ms for ONNX
Runtime's (inexact) int8 model as a whole.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import tvm
from tvm.script import tirx as T
from tvm.target import codegen

from ..intrinsics.x86_avx2 import PMADDWD
from .contract import ExactnessError, ceil_div, conv_operands, linear_operands, prepare_channels
from .dense import DenseIsa, dense_primfunc
from .geometry import conv_geometry
from .relax_call import emit_call_tir, kernel_info, with_info
from .requant import RequantColumn as Col, RequantRows, group_rows, requant_params
from .tiling import GemmPlan, choose_plan, default_threads
from .x86_epilogue import encode_requant_rows, narrow8, requant_lanes
from .x86_depthwise import depthwise_kernel, pack_depthwise_weights
from .x86_gemm_conv import gemm_conv_kernel, pack_weight_pairs
from .x86_u8s8 import pointwise_u8s8

__all__ = ["conv2d_requant_primfunc", "linear_requant_primfunc", "emit_call_tir", "kernel_info", "ExactnessError",
           "GemmPlan", "choose_plan", "check_target", "default_threads", "KERNEL_NAMES"]

# what each kind is called in the kernel choices of a build (targets/kernel_lowering.py)
KERNEL_NAMES = {"pointwise": "x86 vpmaddwd gemm-conv (pointwise)", "im2col": "x86 vpmaddwd gemm-conv (im2col)",
                "depthwise": "x86 vpmaddwd depthwise", "dense": "x86 vpmaddwd dense",
                "pointwise_u8s8": "x86 vpmaddubsw gemm-conv (pointwise u8s8)"}


def check_target(target) -> tvm.target.Target:
    """``target`` (a tvm Target or its JSON dict), checked to be an x86 LLVM target with
    AVX2; ValueError otherwise (the caller, a target module, passes its own)."""
    if target is None:
        raise ValueError("the x86 kernels need the tvm target they are built for (e.g. targets.host.host_target())")
    if isinstance(target, dict):
        target = tvm.target.Target(target)
    if target.kind.name != "llvm" or not codegen.target_has_features("avx2", target):
        raise ValueError(f"the x86 int8 kernels need an x86 LLVM target with AVX2, got {target}")
    return target


def conv2d_requant_primfunc(x_shape: Sequence[int], x_dtype: str, w: np.ndarray, bias, x_zp: int, stride=(1, 1),
                            padding=(0, 0), dilation=(1, 1), groups: int = 1, mult=None, shift=None, out_zp: int = 0,
                            lo=0, hi=255, out_dtype: str = "uint8", target: Optional[tvm.target.Target] = None,
                            name: str = "conv2d_requant", plan: Optional[GemmPlan] = None,
                            dw_opts: Optional[dict] = None, threads: Optional[int] = None,
                            u8s8: Optional[bool] = None):
    """A fused conv2d + requantize PrimFunc, exact (``kernels.conv2d``) and scheduled for
    the x86 ``target`` (AVX2), and the constant arrays it takes.

    Arguments follow ``qcompiler.kernels.conv2d``: ``x_shape`` [N, C, H, W] (``x_dtype``
    uint8 or int8), ``w`` [O, C/groups, kh, kw] int8, ``bias`` [O] int32, scalar ``x_zp``
    and ``out_zp``, per-channel (or scalar) ``mult``, ``shift``, ``lo``, ``hi``.
    ``padding`` is the conv's (ph, pw) or an explicit (top, bottom, left, right) (a
    zero-point ``constant_pad_nd`` taken into the kernel).

    Returns ``(func, consts)``: ``func(x, *consts, out)`` writes ``out`` [N, O, Ho, Wo];
    ``consts``: GEMM kernels: weights int32 [G, O/G/mo, ⌈K/2⌉, mo] (int16 pairs of
    consecutive reduction indices) and requantize rows int32 [G·(O/G padded), 8];
    depthwise: weight pairs int32 [O, kh, ⌈kw/2⌉] (or [O, kh, kw] with horizontal
    dilation) and requantize rows int32 [O, 8]; u8s8: entry index, entry weights, block
    offsets, requantize rows. ``threads``: runtime threads to plan for (default
    ``default_threads()``); ``plan`` / ``dw_opts``: override the tiling (benchmarks,
    tests). ``u8s8=True``: for a uint8 pointwise conv (groups 1), the exact ``vpmaddubsw``
    kernel (off by default: slower in the network, docs/results.md).
    Raises ``ExactnessError`` when exactness cannot be guaranteed, ValueError for
    inconsistent shapes or a target without AVX2."""
    check_target(target)
    x_dtype, out_dtype, w = conv_operands(x_dtype, w, mult, shift, out_dtype)
    geom = conv_geometry(x_shape, w.shape, stride, padding, dilation, groups)
    o, x_zp, out_zp = geom.out_channels, int(x_zp), int(out_zp)
    ch = prepare_channels(w.reshape(o, -1), bias, x_dtype, x_zp, mult, shift, out_zp, lo, hi)
    params = requant_params(ch, mult, shift, out_zp, out_dtype)
    if geom.group_channels == 1:  # depthwise (or depthwise with a channel multiplier)
        rq = encode_requant_rows(params)
        func, info = depthwise_kernel(geom, x_dtype, x_zp, rq, out_zp, out_dtype, name, **(dw_opts or {}))
        return with_info(func, info), [pack_depthwise_weights(ch.weights.reshape(w.shape), geom.dilation[1]), rq.table]
    threads = threads or default_threads()
    if u8s8 and x_dtype == "uint8" and geom.groups == 1 and geom.is_pointwise:
        plan = replace(choose_plan(ceil_div(geom.reduction, 4), geom.out_pixels, o, geom.batch, threads, plan), mo=1)
        rq = encode_requant_rows(params)
        func, consts, info = pointwise_u8s8(geom, ch.weights, rq, out_zp, out_dtype, plan, name)
        return with_info(func, info), [*consts, rq.table]
    og = geom.out_per_group
    plan = choose_plan(ceil_div(geom.reduction, 2), geom.out_pixels, og, geom.batch * geom.groups, threads, plan)
    rq = encode_requant_rows(params, group_rows(geom.groups, og, plan.mo))
    func, info = gemm_conv_kernel(geom, x_dtype, x_zp, rq, out_zp, out_dtype, plan, name)
    return with_info(func, info), [pack_weight_pairs(ch.weights, geom.groups, plan.mo), rq.table]


def linear_requant_primfunc(x_shape: Sequence[int], x_dtype: str, w: np.ndarray, bias, x_zp: int, mult, shift,
                            out_zp: int = 0, lo=0, hi=255, out_dtype: str = "uint8",
                            target: Optional[tvm.target.Target] = None, name: str = "linear_requant", vo: int = 4):
    """A fused linear + requantize PrimFunc (``qcompiler.kernels.linear``: x [..., K] ·
    w[O, K]ᵀ + bias, requantized per output channel) for the x86 ``target``, and its
    constants: ``func(x, *consts, out)``, out [..., O]. consts: weights int8
    [⌈O/32⌉, ⌈K/2⌉, 64] (32 outputs × 2 reduction indices per row) and the requantize
    columns int32 [8, O padded to 32] (the rows of ``kernels/requant.py``, transposed)."""
    check_target(target)
    x_shape, x_dtype, out_dtype, w = linear_operands(x_shape, x_dtype, w, out_dtype)
    o = w.shape[0]
    ch = prepare_channels(w, bias, x_dtype, int(x_zp), mult, shift, int(out_zp), lo, hi)
    rq = encode_requant_rows(requant_params(ch, mult, shift, int(out_zp), out_dtype))
    func, info, consts = dense_primfunc(DENSE, x_shape, x_dtype, ch.weights, rq, int(out_zp), out_dtype, name, vo=vo)
    return with_info(func, info), consts


# ----------------------------------------------------------------- what x86 supplies to the shared loops


def _pair_word(x, row, pair, m: int, k: int, x_dtype: str):
    """Packed activation element: x[row, 2·pair] and x[row, 2·pair + 1] as the low and high
    int16 of one int32 (the last index repeated past K, where the weights are zero; 0 past
    M rows), for ``vpmaddwd`` against a broadcast."""
    first = T.Cast("int32", x[T.min(row, m - 1), pair * 2])
    second = T.Cast("int32", x[T.min(row, m - 1), T.min(pair * 2 + 1, k - 1)])
    low = (first & 0xFFFF) if x_dtype == "int8" else first
    return T.if_then_else(row < m, low | (second << 16), 0)


def _pmaddwd_step(acc, weights, words, tile, step, substep, vector, row):
    """acc (int32x8) + ``vpmaddwd`` of the 8 channels × 2 int8 weights of weight row
    ``step`` (sign-extended to int16) by activation pair ``step`` of ``row`` (broadcast)."""
    return acc + PMADDWD(T.Cast("int16x16", weights[tile, step, T.ramp(vector * 16, 1, 16)]),
                         T.reinterpret("int16x16", T.broadcast(words[row, step], 8)))


def _requantize_8(acc, column, rq: RequantRows, out_zp: int, out_dtype: str):
    """``out_dtype`` x8 of an int32x8 accumulator (``x86_epilogue``: requantize, saturating packs)."""
    return narrow8(requant_lanes(acc, column, rq.mode, out_zp, rq.fold_zp, rq.clamp), out_dtype)


# dense: 8 channels per int32x8, int16 activation pairs broadcast, 3 rows × 4 vectors per task,
# parallel over tasks; the padding channels' columns give a harmless "fast" epilogue
DENSE = DenseIsa(lanes=8, group=2, substeps=1, rows=3, weight_dtype="int8", packed_dtype="int32", k_per_element=2,
                 parallel=True, vectors_outer=True, scratch_scope=lambda nbytes: "local", pack_element=_pair_word,
                 multiply_accumulate=_pmaddwd_step, requantize=_requantize_8,
                 padding_columns=lambda out_dtype: {Col.MULTIPLIER: 1 << 30, Col.SHIFT: 8, Col.HI: 255})
