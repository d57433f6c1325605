"""Exact, fast int8 kernels for the x86 host (AVX2 + FMA, no AVX-512, no VNNI): conv2d,
depthwise conv2d and linear, each fused with the fixed-point requantize of
``qcompiler/fixed_point.py``, as TVM 0.27 TIR PrimFuncs (TVMScript) for ``relax.call_tir``.
Bit-exact with ``qcompiler.kernels.conv2d`` / ``linear`` (tests/test_x86_int8.py).

API
    func, consts = conv2d_requant_primfunc(x_shape, x_dtype, w, bias, x_zp, stride, padding,
                                           dilation, groups, mult, shift, out_zp, lo, hi,
                                           out_dtype, target, threads=None)
    func, consts = linear_requant_primfunc(x_shape, x_dtype, w, bias, x_zp, mult, shift,
                                           out_zp, lo, hi, out_dtype, target)
    y = emit_call_tir(bb, func, consts, x)        # in a relax.BlockBuilder dataflow block

The arguments are those of ``qcompiler.kernels.conv2d`` / ``linear`` plus the static input
shape and dtypes (uint8 or int8 on both sides). ``func`` is destination-passing, as
``call_tir`` wants: ``func(x, *consts, out)`` with ``x`` and ``out`` in the program's own
layout (NCHW for conv2d, [..., K] → [..., O] for linear). ``consts`` are numpy arrays
computed once here (weights re-packed for the kernel, the bias with the input zero point
folded in and the requantize constants, one int32 row per output channel) and handed in
as Relax constants; only shapes, dtypes, the output zero point and the epilogue variant are
baked into the code. ``emit_call_tir`` adds the function without its global symbol (Relax
then names it: several kernels may share a name) and emits the call. ``kernel_info(func)``
gives the chosen kernel and tiling. ``ExactnessError`` (a ValueError) means "keep the
default lowering": a channel's int32 accumulator could overflow and its output is not
provably constant, or lo/hi lie outside the output dtype. ``threads``: the TVM runtime
thread count the tiling is planned for (default TVM_NUM_THREADS, else the CPU count); with
more than one thread, layers with few pixel chunks are also split over output channels,
one split per thread (about 0-10% extra work at 1 thread, from packing the input twice).

Kernels (``kernel_info(func)["kind"]``)
- "pointwise" (1×1, stride 1, no padding; any groups) and "im2col" (any other conv with
  more than one input channel per group): a GEMM out[o, p] = Σ_k w[o, k]·x[k, p] over output
  pixels p. Per parallel task (batch, group, chunk of output pixels[, output-channel
  split]) and per reduction block (≤ 16 KB of packed input: L1), the input is packed as
  int16 pairs of consecutive k, one int32 per pair: ``xp[k/2, p]`` (pointwise: straight
  from NCHW x, 8 pixels per vector; im2col: from a zero-point padded copy of x, stride 2
  via 16-byte loads and an even-byte shuffle). The register tile is 1 output channel × 8
  vectors of 8 pixels (1 × ⌈P/8⌉ for P ≤ 64); its inner loop, per pair of k, is
        vpbroadcastd w-pair → ymm;  8 × (vpmaddwd ymm, [xp], ymm;  vpaddd)
  i.e. 16 multiply-adds per vpmaddwd, no spills. Partial sums go through a scratch
  buffer when there are several reduction blocks; the last block requantizes and stores.
- "depthwise" (one input channel per output channel, any multiplier): one task per output
  plane; the input plane is widened to int16 in a zero-point padded scratch plane, then
  with a broadcast weight pair (taps j, j+1 of a kernel row):
    stride 1: 16 int16 from column x0 + j hold taps (j, j+1) of the even output pixels,
      from x0 + j + 1 those of the odd ones: two vpmaddwd with memory operands per pair
      and 16 pixels; vectors run along output rows ("rows") or, on small planes, across
      rows on the padded pitch ("flat", dropped columns computed);
    stride 2: 16 int16 from column 2·x0 + j hold taps (j, j+1) of 8 consecutive pixels.
  Other horizontal strides fall back to a scalar loop.
- "dense" (linear): output channels in the lanes; int8 weights laid out
  [o-tile][k/2][32 outputs][2] and sign-extended on load (vpmovsxbw: half the bytes of
  int16 weights; batch-1 dense layers are bound by weight traffic), activation pairs
  broadcast.

Exactness
- Every product is formed exactly and summed in int32: activations and weights are
  widened to int16 and multiplied by ``vpmaddwd`` (``llvm.x86.avx2.pmadd.wd``: 16 int16
  products summed in pairs into 8 int32, |pair sum| ≤ 2·255·128 < 2^31). ``vpmaddubsw``
  (u8×s8 pairs summed with int16 saturation) is never used.
- The input zero point is folded into the bias: Σ (x − z)·w = Σ x·w − z·Σ w, exact
  everywhere because padded positions hold z.
- The sum is built with wrap-around int32 adds, so it equals the reference's int64 sum
  whenever the true sum fits in int32; that is checked per output channel from the
  weights, the bias and the input dtype's range. A channel whose sum can leave int32
  (EfficientNet-Lite0 has "dead" channels whose bias saturated to −2^31) is still exact
  when its requantized output is the same at both ends of its accumulator's range
  (requantize is monotone): it becomes a constant channel (zero weights, an epilogue row
  that yields the constant). Otherwise ``ExactnessError``.
- Requantize clamp(z + ((acc·m + 2^(S−1)) >> S), lo, hi). When every S ≥ 33 (multipliers
  below 1/4: always so in EfficientNet-Lite0, S = 33..62), it runs in 32-bit lanes:
  h = (acc·m) >> 32 by two ``vpmuldq`` (even and odd lanes) and a blend, then
  (h + 2^(S−33)) >> (S − 32) by ``vpsrad``. This is the int64 formula exactly: adding
  2^(S−1) = 2^32·2^(S−33) commutes with the floor division by 2^32, and floor divisions
  compose. The output zero point is folded into the rounding constant when no int32
  overflow is possible (z·2^(S−32) is a multiple of the final divisor). With any S < 33 the
  epilogue runs in int64 lanes instead (slower, same result). The clamp is skipped when
  [lo, hi] is the whole output dtype range, since the narrowing packs (vpackssdw, then
  vpackuswb / vpacksswb) saturate to exactly that range.

Layout: activations stay NCHW between ops; the packing above is inside each kernel (and
inside the measured times), which keeps every store a contiguous row of output pixels.
Packing costs about 3% of the pointwise time on EfficientNet-Lite0, so an NCHWc layout
between ops would not pay for itself.

Speed (bench/x86_kernels.py, EfficientNet-Lite0's 33 distinct conv/linear shapes, 1 thread,
Zen 3 at about 3 GHz): about 7.2-7.6 ms for all its conv/linear layers together (385 M
MACs), against about 150 ms for TVM's default build of the same ops and 8.1-8.4 ms for ONNX
Runtime's (inexact) int8 model as a whole, measured in the same runs. Pointwise layers run
at 45-70 GMAC/s (the exact vpmaddwd + vpaddd pair retires about 24 multiply-adds per
cycle on this core, about 72 GMAC/s), depthwise at 10-34 GMAC/s (bound by the per-output
requantize and, on small planes, per-plane overhead).

Note: TVMScript parses a function from its source file when it is built; editing this file
while a build is running makes that build fail.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import tvm
from tvm.script import tirx as T
from tvm.target import codegen

from .int8_common import INT32_MAX, ExactnessError, _cdiv, _drange, _pad4, _per_channel, _prepare_channels, \
    _scope, concat_vectors, emit_call_tir, kernel_info

__all__ = ["conv2d_requant_primfunc", "linear_requant_primfunc", "emit_call_tir", "kernel_info", "ExactnessError",
           "GemmPlan", "choose_plan", "requant_constants", "check_target", "default_threads"]

PMADDWD = "llvm.x86.avx2.pmadd.wd"


def check_target(target: Optional[tvm.target.Target]) -> tvm.target.Target:
    """The target (default: the host's), checked to be an x86 LLVM target with AVX2."""
    if target is None:
        from .host import host_target

        target = host_target()
    if isinstance(target, dict):
        target = tvm.target.Target(target)
    if target.kind.name != "llvm" or not codegen.target_has_features("avx2", target):
        raise ValueError(f"targets/x86_int8 kernels need an x86 LLVM target with AVX2, got {target}")
    return target


# ----------------------------------------------------------------- requantize


@dataclass
class Requant:
    """Per-channel requantize constants, one int32 row per output channel (padded rows
    are harmless): rq[o] = [bias', mult, rnd, sh, lo, hi, 0, 0] where bias' is the bias
    with the zero point folded in; in the "fast" epilogue rnd = 2^(S−33), sh = S − 32; in
    the "int64" epilogue rnd is unused and sh = S."""

    rq: np.ndarray  # int32 [n_rows, 8]
    mode: str  # "fast" | "int64"
    fold_zp: bool  # the output zero point is inside rnd (fast mode): (h + rnd + z·2^sh) >> sh
    clamp: bool = True  # False when every [lo, hi] is the output dtype's range (vector stores saturate)


def requant_constants(bias_folded: np.ndarray, mult, shift, lo, hi, n: int, out_zp: int, out_dtype: str,
                      acc_bound: np.ndarray, rows: Optional[np.ndarray] = None,
                      const: Optional[np.ndarray] = None) -> Requant:
    """Requantize rows for ``n`` output channels; ``rows[i]`` is the output channel of
    row i (−1 for padding rows; default the identity). ``acc_bound[o]`` bounds |acc| of
    channel o (acc = the kernel's int32 sum, bias included). ``const[o]``: channel o's
    output is the constant lo[o] (= hi[o]) whatever the input (its weights are zero); its
    row is set so that the epilogue yields that constant without clamping: in the fast
    mode acc = 0, rnd = c − z (c with the zero point folded), sh = 0; in the int64 mode
    acc = bias = c − z, m = 1, S = 0."""
    b, m, s, l, h = (_per_channel(a, n, nm) for a, nm in ((bias_folded, "bias"), (mult, "mult"), (shift, "shift"),
                                                         (lo, "lo"), (hi, "hi")))
    const = np.zeros(n, bool) if const is None else np.asarray(const, bool)
    live = ~const
    if np.any(m < 0) or np.any(m > INT32_MAX) or np.any(s < 0) or np.any(s > 62):
        raise ExactnessError("mult must be in [0, 2^31) and shift in [0, 62]")
    if np.any(b > INT32_MAX) or np.any(b < -INT32_MAX - 1):
        raise ExactnessError("bias with the zero point folded in does not fit in int32")
    dmin, dmax = _drange(out_dtype)
    if np.any(l < dmin) or np.any(h > dmax):
        raise ExactnessError(f"requantize bounds [lo, hi] outside the range of {out_dtype}")
    mode = "fast" if np.all(s[live] >= 33) else "int64"
    fold = False
    if mode == "fast" and out_zp != 0:
        sl = s[live]
        hmax = (np.asarray(acc_bound, np.int64)[live] * m[live] >> 32) + 1
        fold = bool(np.all(hmax + (1 << (sl - 33)) + abs(out_zp) * (1 << (sl - 32)) < 2**31 - 1))
    if rows is None:
        rows = np.arange(n)
    rq = np.zeros((len(rows), 8), np.int64)
    rq[:, 1] = 1 << 30
    rq[:, 3] = 8 if mode == "fast" else 40
    rq[:, 5] = 255
    for i, o in enumerate(rows):
        if o < 0:
            continue
        rq[i, 4] = l[o]
        rq[i, 5] = h[o]
        if const[o]:
            if mode == "fast":
                rq[i, 0], rq[i, 1], rq[i, 3] = 0, 1 << 30, 0
                rq[i, 2] = l[o] - (0 if fold else out_zp)
            else:
                rq[i, 0], rq[i, 1], rq[i, 3] = l[o] - out_zp, 1, 0
            continue
        rq[i, 0] = b[o]
        rq[i, 1] = m[o]
        if mode == "fast":
            rq[i, 2] = (1 << (int(s[o]) - 33)) + (out_zp << (int(s[o]) - 32) if fold else 0)
            rq[i, 3] = s[o] - 32
        else:
            rq[i, 3] = s[o]
    clamp = not (np.all(l[live] == dmin) and np.all(h[live] == dmax))
    return Requant(rq.astype(np.int32), mode, fold, clamp)


def _bcast(v, lanes):
    return tvm.tirx.Broadcast(v, lanes) if lanes > 1 else v


def _i32x8_mulhi(a, m):
    """(a·m) >> 32 for int32x8 a and a broadcast int32 m, in 32-bit lanes: ``vpmuldq`` on
    the even and on the odd lanes (written as int64 multiplies of sign-extended low
    halves, which LLVM selects as vpmuldq), then a blend of the high halves."""
    c32 = tvm.tirx.Broadcast(tvm.tirx.const(32, "int64"), 4)
    u32 = tvm.tirx.Broadcast(tvm.tirx.const(32, "uint64"), 4)
    mv = tvm.tirx.Broadcast(tvm.tirx.Cast("int64", m), 4)

    def sext_lo(v64):
        return (v64 << c32) >> c32

    a64 = T.reinterpret("int64x4", a)
    even = sext_lo(a64) * mv
    a_odd = T.reinterpret("int64x4", T.reinterpret("uint64x4", a) >> u32)
    odd = sext_lo(a_odd) * mv
    even_hi = T.reinterpret("int32x8", T.reinterpret("uint64x4", even) >> u32)
    return tvm.tirx.Shuffle([even_hi, T.reinterpret("int32x8", odd)], [0, 9, 2, 11, 4, 13, 6, 15])


def _i32x8_mulhi_v(a, mv):
    """(a·m) >> 32 lane by lane for int32x8 a and m (vpmuldq on even and odd lanes)."""
    c32 = tvm.tirx.Broadcast(tvm.tirx.const(32, "int64"), 4)
    u32 = tvm.tirx.Broadcast(tvm.tirx.const(32, "uint64"), 4)

    def sext_lo(v64):
        return (v64 << c32) >> c32

    def odd(v):
        return T.reinterpret("int64x4", T.reinterpret("uint64x4", v) >> u32)

    even = sext_lo(T.reinterpret("int64x4", a)) * sext_lo(T.reinterpret("int64x4", mv))
    oddp = sext_lo(odd(a)) * sext_lo(odd(mv))
    even_hi = T.reinterpret("int32x8", T.reinterpret("uint64x4", even) >> u32)
    return tvm.tirx.Shuffle([even_hi, T.reinterpret("int32x8", oddp)], [0, 9, 2, 11, 4, 13, 6, 15])


def _requant_lanes(acc, rqv, mode: str, out_zp: int, fold_zp: bool, clamp: bool):
    """Requantize an int32x8 accumulator whose lanes are 8 output channels; ``rqv(j)`` is
    the int32x8 vector of requantize column j for those channels."""
    if mode == "fast":
        h = _i32x8_mulhi_v(acc, rqv(1))
        r = (h + rqv(2)) >> rqv(3)
    else:
        s64 = tvm.tirx.Cast("int64x8", rqv(3))
        one = tvm.tirx.Broadcast(tvm.tirx.const(1, "int64"), 8)
        rnd = (one << s64) >> one
        r64 = (tvm.tirx.Cast("int64x8", acc) * tvm.tirx.Cast("int64x8", rqv(1)) + rnd) >> s64
        lim = tvm.tirx.Broadcast(tvm.tirx.const(1 << 20, "int64"), 8)
        r = tvm.tirx.Cast("int32x8", tvm.tirx.max(tvm.tirx.min(r64, lim), -lim))
    if out_zp != 0 and not fold_zp:
        r = r + tvm.tirx.Broadcast(tvm.tirx.const(out_zp, "int32"), 8)
    if not clamp:
        return r
    return tvm.tirx.max(tvm.tirx.min(r, rqv(5)), rqv(4))


def _requant_i32(acc, lanes: int, rq, row, mode: str, out_zp: int, fold_zp: bool, clamp: bool = True):
    """The requantized, clamped int32 values (``lanes`` lanes; 8 or 1 in the fast mode) of
    an int32 accumulator expression that already holds the folded bias. With ``fold_zp``
    the zero point is inside rq[row, 2] (fast mode)."""
    vt = (lambda d: f"{d}x{lanes}") if lanes > 1 else (lambda d: d)
    if mode == "fast":
        if lanes == 8:
            h = _i32x8_mulhi(acc, rq[row, 1])
        else:
            prod = tvm.tirx.Cast(vt("int64"), acc) * _bcast(tvm.tirx.Cast("int64", rq[row, 1]), lanes)
            h = tvm.tirx.Cast(vt("int32"), prod >> _bcast(tvm.tirx.const(32, "int64"), lanes))
        r = (h + _bcast(rq[row, 2], lanes)) >> _bcast(rq[row, 3], lanes)
    else:
        s64 = tvm.tirx.Cast("int64", rq[row, 3])
        rnd = tvm.tirx.shift_right(tvm.tirx.shift_left(tvm.tirx.const(1, "int64"), s64), tvm.tirx.const(1, "int64"))
        prod = tvm.tirx.Cast(vt("int64"), acc) * _bcast(tvm.tirx.Cast("int64", rq[row, 1]), lanes) + _bcast(rnd, lanes)
        r64 = prod >> _bcast(s64, lanes)
        r64 = tvm.tirx.max(tvm.tirx.min(r64, _bcast(tvm.tirx.const(1 << 20, "int64"), lanes)),
                           _bcast(tvm.tirx.const(-(1 << 20), "int64"), lanes))
        r = tvm.tirx.Cast(vt("int32"), r64)
    if out_zp != 0 and not fold_zp:
        r = r + _bcast(tvm.tirx.const(out_zp, "int32"), lanes)
    if not clamp:  # [lo, hi] is the output dtype's range: the saturating packs clamp
        return r
    return tvm.tirx.max(tvm.tirx.min(r, _bcast(rq[row, 5], lanes)), _bcast(rq[row, 4], lanes))


def _narrow16(a, b, odt: str):
    """Two int32x8 vectors → one ``odt`` x16 vector (a's lanes then b's), saturating:
    vpackssdw, then vpackuswb / vpacksswb of the two halves put back in order."""
    w = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.packssdw", a, b)  # [a0-3 b0-3 | a4-7 b4-7]
    lo = tvm.tirx.Shuffle([w], [0, 1, 2, 3, 8, 9, 10, 11])  # a0..7
    hi = tvm.tirx.Shuffle([w], [4, 5, 6, 7, 12, 13, 14, 15])  # b0..7
    if odt == "uint8":
        return T.call_llvm_pure_intrin("uint8x16", "llvm.x86.sse2.packuswb.128", lo, hi)
    return T.call_llvm_pure_intrin("int8x16", "llvm.x86.sse2.packsswb.128", lo, hi)


def _narrow8(a, odt: str):
    """One int32x8 vector → ``odt`` x8, saturating."""
    w = T.call_llvm_pure_intrin("int16x8", "llvm.x86.sse2.packssdw.128",
                                tvm.tirx.Shuffle([a], [0, 1, 2, 3]), tvm.tirx.Shuffle([a], [4, 5, 6, 7]))
    intr = "llvm.x86.sse2.packuswb.128" if odt == "uint8" else "llvm.x86.sse2.packsswb.128"
    v = T.call_llvm_pure_intrin(f"{odt}x16", intr, w, w)
    return tvm.tirx.Shuffle([v], list(range(8)))


def _requant_row(acc_buf, base: int, nvec: int, rq, row, mode, out_zp, fold_zp, odt, clamp=True):
    """The ``odt`` x(8·nvec) output of nvec int32x8 accumulator vectors acc_buf[base + 8v + l]."""
    vals = [_requant_i32(acc_buf[tvm.tirx.Ramp(base + 8 * v, 1, 8)], 8, rq, row, mode, out_zp, fold_zp, clamp)
            for v in range(nvec)]
    parts = []
    for v in range(0, nvec - 1, 2):
        parts.append(_narrow16(vals[v], vals[v + 1], odt))
    if nvec % 2:
        parts.append(_narrow8(vals[-1], odt))
    return concat_vectors(parts)


# ----------------------------------------------------------------- conv2d as GEMM (vpmaddwd)


@dataclass
class GemmPlan:
    """Tiling of the vpmaddwd GEMM: a register tile of ``mo`` output channels × ``np_``
    vectors of 8 output pixels; pixels are processed in chunks of ``pb`` (a multiple of
    8·np_), the reduction in blocks of ``kb`` int16 pairs (packed activations of one
    block: kb·pb·4 bytes, kept in L1); ``osplit`` splits the output channels over the
    parallel loop as well (one split per thread when there are few pixel chunks). Zero
    fields are chosen by ``choose_plan``."""

    mo: int = 1
    np_: int = 8
    pb: int = 0  # 0: auto
    kb: int = 0  # 0: auto
    osplit: int = 0  # 0: auto


L1_BLOCK = 16384  # bytes of packed activations per reduction block


def default_threads() -> int:
    """The thread count the kernels are planned for: TVM_NUM_THREADS if set (TVM's runtime
    reads it too), else the CPU count."""
    env = os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def choose_plan(k2: int, p: int, og: int, n_outer: int, threads: int = 1, plan: Optional[GemmPlan] = None) -> GemmPlan:
    """The tiling for a GEMM of og output channels × p pixels × k2 pairs (n_outer
    independent such GEMMs: batch × groups); the zero fields of ``plan`` are chosen here.
    Tuned on EfficientNet-Lite0's layers on a Zen 3 core (bench/x86_kernels.py --sweep):
    1 row × 8 vectors (64 pixels) everywhere, 1 × ⌈p/8⌉ vectors when p ≤ 64; a reduction
    block and a pixel chunk keep the packed activations of a block within 16 KB (L1).
    Parallel tasks are (batch, group, chunk) and, with several threads and few chunks, also
    splits of the output channels, one per thread (tasks are handed to threads in
    contiguous ranges, so one split per thread balances the work)."""
    auto_tile = plan is None
    plan = plan or GemmPlan()
    mo, np_ = plan.mo, plan.np_
    if auto_tile and p <= 64:
        np_ = _cdiv(p, 8)
        mo = 1 if np_ >= 6 else (2 if np_ >= 4 else (4 if np_ >= 2 else 6))
    tw = 8 * np_
    kb = plan.kb or max(8, min(k2, L1_BLOCK // (4 * tw)))
    nkb = _cdiv(k2, kb)
    kb = _cdiv(k2, nkb)
    pb = plan.pb or (max(tw, (L1_BLOCK // (4 * kb)) // tw * tw) if nkb == 1 else tw)
    pb = min(_cdiv(pb, tw) * tw, _cdiv(p, tw) * tw)
    nch = _cdiv(p, pb) * n_outer
    ob = _cdiv(og, mo)
    osplit = plan.osplit
    if not osplit:
        osplit = min(ob, threads) if threads > 1 and nch < 8 * threads else 1
    return GemmPlan(mo, np_, pb, kb, max(1, osplit))


def _pack_weights_pairs(wg: np.ndarray, mo: int) -> np.ndarray:
    """[G, og, K] int → int32 [G, OB, K2, mo]: each int32 holds the int16 pair
    (w[.., 2k2], w[.., 2k2+1]) (little endian: low half first)."""
    g, og, k = wg.shape
    k2 = _cdiv(k, 2)
    ob = _cdiv(og, mo)
    w16 = np.zeros((g, ob * mo, k2 * 2), np.int16)
    w16[:, :og, :k] = wg
    wp = w16.view(np.int32).reshape(g, ob, mo, k2)
    return np.ascontiguousarray(wp.transpose(0, 1, 3, 2))


def _gemm_conv(n: int, c: int, h: int, wd: int, x_dtype: str, w: np.ndarray, stride, padding, dilation, groups: int,
               x_zp: int, rq: Requant, out_zp: int, out_dtype: str, plan: GemmPlan, name: str):
    """conv2d + requantize as a GEMM over (output channel) × (output pixel) × (c, i, j)
    with vpmaddwd. Per parallel task (batch, group, pixel chunk, output-channel split):
    for each reduction block, pack the chunk's activations as int16 pairs
    xp[k2, pixel] (pointwise: straight from x; otherwise im2col from a zero-point padded
    copy of x), then run the register tiles over it; partial sums go through a scratch
    buffer when there is more than one reduction block; the last block requantizes and
    stores."""
    o, cg, kh, kw = w.shape
    g = groups
    og = o // g
    (sh, sw), (pt, pbm, pl, pr), (dh, dw) = stride, padding, dilation
    ho = (h + pt + pbm - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    P = ho * wo
    K = cg * kh * kw
    K2 = _cdiv(K, 2)
    MO, NP = plan.mo, plan.np_
    TW = NP * 8
    OB = _cdiv(og, MO)
    OPG = OB * MO
    pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == pbm == pl == pr == 0
    PB = plan.pb
    assert PB % TW == 0
    NCH = _cdiv(P, PB)
    NT = PB // TW  # full tiles of a full chunk
    RL = P - (NCH - 1) * PB  # pixels of the last chunk
    NVL = _cdiv(RL, 8)
    NTL, NPR = NVL // NP, NVL % NP  # full tiles and remainder vectors of the last chunk
    KB = plan.kb
    NKB = _cdiv(K2, KB)
    OS = max(1, min(plan.osplit, OB))
    OBS = _cdiv(OB, OS)
    NTASK = n * g * NCH * OS
    mode, fold, odt, clamp = rq.mode, rq.fold_zp, out_dtype, rq.clamp
    signed_x = x_dtype == "int8"
    HP, WP = h + pt + pbm, wd + pl + pr
    KS = kh * kw
    XPW = PB + 8  # packed row length (im2col writes up to 7 lanes past a chunk)
    copy_x = not pointwise
    PART = OBS * MO * PB if NKB > 1 else 1
    SLACK = 16 * max(sw, 1) + 64

    def lo16(v):
        return (v & 0xFFFF) if signed_x else v

    def row_load(xb, nn, cc, yy, xx0):
        """8 lanes x[n, c, yy, xx0 + l·sw] of the padded copy, as int32x8."""
        base = ((nn * c + cc) * HP + yy) * WP + xx0
        if sw == 1:
            return T.Cast("int32x8", xb[T.ramp(base, 1, 8)])
        if sw == 2:
            v16 = xb[T.ramp(base, 1, 16)]
            return T.Cast("int32x8", tvm.tirx.Shuffle([v16], [0, 2, 4, 6, 8, 10, 12, 14]))
        return T.Cast("int32x8", xb[T.ramp(base, sw, 8)])

    @T.macro
    def tile(nv, tp, ob, kb, k2n, xp, wp, rqb, part, out, nn, gg, osp, p0):
        # register tile: MO rows × nv vectors at chunk pixel tp, reduction block kb
        acc = T.alloc_buffer((MO * nv * 8,), "int32", scope="global")
        for m in T.unroll(MO):
            for v in T.unroll(nv):
                if NKB == 1:
                    acc[T.ramp((m * nv + v) * 8, 1, 8)] = T.broadcast(rqb[gg * OPG + ob * MO + m, 0], 8)
                else:
                    acc[T.ramp((m * nv + v) * 8, 1, 8)] = T.if_then_else(
                        kb == 0, T.broadcast(rqb[gg * OPG + ob * MO + m, 0], 8),
                        part[T.ramp(((ob - osp * OBS) * MO + m) * PB + tp + v * 8, 1, 8)])
        for k2 in range(k2n):
            for m in T.unroll(MO):
                for v in T.unroll(nv):
                    acc[T.ramp((m * nv + v) * 8, 1, 8)] = acc[T.ramp((m * nv + v) * 8, 1, 8)] + T.call_llvm_pure_intrin(
                        "int32x8", PMADDWD,
                        T.reinterpret("int16x16", xp[k2, T.ramp(tp + v * 8, 1, 8)]),
                        T.reinterpret("int16x16", T.broadcast(wp[gg, ob, kb * KB + k2, m], 8)))
        if NKB > 1:
            if kb < NKB - 1:
                for m in T.unroll(MO):
                    for v in T.unroll(nv):
                        part[T.ramp(((ob - osp * OBS) * MO + m) * PB + tp + v * 8, 1, 8)] = acc[T.ramp((m * nv + v) * 8, 1, 8)]
        if NKB == 1 or kb == NKB - 1:
            for m in T.unroll(MO):
                if ob * MO + m < og:
                    pp = T.meta_var(p0 + tp)
                    if pp + nv * 8 <= P:
                        out[nn, gg * og + ob * MO + m, T.ramp(pp, 1, nv * 8)] = _requant_row(
                            acc, m * nv * 8, nv, rqb, gg * OPG + ob * MO + m, mode, out_zp, fold, odt, clamp)
                    else:
                        res = T.alloc_buffer((nv * 8,), odt, scope="global")
                        res[T.ramp(0, 1, nv * 8)] = _requant_row(acc, m * nv * 8, nv, rqb, gg * OPG + ob * MO + m, mode,
                                                                out_zp, fold, odt, clamp)
                        for l in range(nv * 8):
                            if pp + l < P:
                                out[nn, gg * og + ob * MO + m, pp + l] = res[l]

    @T.prim_func
    def conv(x4: T.Buffer((n, c, h, wd), x_dtype), wp: T.Buffer((g, OB, K2, MO), "int32"),
             rqb: T.Buffer((g * OPG, 8), "int32"), out4: T.Buffer((n, o, ho, wo), odt)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((n, c, h * wd), x_dtype, data=x4.data)
        out = T.decl_buffer((n, o, P), odt, data=out4.data)
        if copy_x:
            # zero-point padded copy of x (flat, with slack for the 16-byte stride-2 loads)
            xpad = T.alloc_buffer((n * c * HP * WP + SLACK,), x_dtype, scope="local")
            for nc_ in T.parallel(n * c):
                for yy in range(HP):
                    if yy < pt or yy >= pt + h:
                        for xx in range(WP):
                            xpad[(nc_ * HP + yy) * WP + xx] = T.Cast(x_dtype, x_zp)
                    else:
                        for xx in range(pl):
                            xpad[(nc_ * HP + yy) * WP + xx] = T.Cast(x_dtype, x_zp)
                        for xx in range(pr):
                            xpad[(nc_ * HP + yy) * WP + pl + wd + xx] = T.Cast(x_dtype, x_zp)
                        for v in range(wd // 16):
                            xpad[T.ramp((nc_ * HP + yy) * WP + pl + v * 16, 1, 16)] = x[
                                nc_ // c, nc_ % c, T.ramp((yy - pt) * wd + v * 16, 1, 16)]
                        for l in range(wd % 16):
                            xpad[(nc_ * HP + yy) * WP + pl + wd // 16 * 16 + l] = x[
                                nc_ // c, nc_ % c, (yy - pt) * wd + wd // 16 * 16 + l]
            for sl in range(SLACK):
                xpad[n * c * HP * WP + sl] = T.Cast(x_dtype, x_zp)
        for task in T.parallel(NTASK):
            osp = T.meta_var(task // (n * g * NCH))  # output-channel split: outermost
            nn = T.meta_var(task // (g * NCH) % n)
            gg = T.meta_var(task // NCH % g)
            ch = T.meta_var(task % NCH)
            p0 = T.meta_var(ch * PB)
            xp = T.alloc_buffer((KB, XPW), "int32", scope=_scope(KB * XPW * 4))
            part = T.alloc_buffer((PART,), "int32", scope=_scope(PART * 4))
            for kb in range(NKB):
                k2n = T.meta_var(T.min(KB, K2 - kb * KB) if K2 % KB != 0 else KB)
                # ---- pack this reduction block of the chunk
                if pointwise:
                    for k2 in range(k2n):
                        ca = T.meta_var(gg * cg + (kb * KB + k2) * 2)
                        cb = T.meta_var(gg * cg + T.min((kb * KB + k2) * 2 + 1, cg - 1))
                        for v in range(PB // 8):
                            if p0 + v * 8 + 8 <= P:
                                xp[k2, T.ramp(v * 8, 1, 8)] = lo16(T.Cast("int32x8", x[nn, ca, T.ramp(p0 + v * 8, 1, 8)])) | (
                                    T.Cast("int32x8", x[nn, cb, T.ramp(p0 + v * 8, 1, 8)]) << T.broadcast(16, 8))
                            else:
                                for l in range(8):
                                    if p0 + v * 8 + l < P:
                                        xp[k2, v * 8 + l] = lo16(T.Cast("int32", x[nn, ca, p0 + v * 8 + l])) | (
                                            T.Cast("int32", x[nn, cb, p0 + v * 8 + l]) << 16)
                else:
                    for k2 in range(k2n):
                        ka = T.meta_var((kb * KB + k2) * 2)
                        kbb = T.meta_var(T.min((kb * KB + k2) * 2 + 1, K - 1))
                        for y in range(p0 // wo, T.min((p0 + PB + wo - 1) // wo, ho)):
                            xs = T.meta_var(T.max(p0 - y * wo, 0))
                            xe = T.meta_var(T.min(p0 + PB - y * wo, wo))
                            for xv in range((xe - xs + 7) // 8):
                                xx = T.meta_var(xs + xv * 8)
                                xp[k2, T.ramp(y * wo + xx - p0, 1, 8)] = lo16(row_load(
                                    xpad, nn, gg * cg + ka // KS, y * sh + ka % KS // kw * dh, xx * sw + ka % kw * dw)) | (
                                    row_load(xpad, nn, gg * cg + kbb // KS, y * sh + kbb % KS // kw * dh,
                                             xx * sw + kbb % kw * dw) << T.broadcast(16, 8))
                # ---- register tiles
                for obl in range(OBS):
                    if osp * OBS + obl < OB:
                        if NCH == 1:
                            for t in range(NTL):
                                tile(NP, t * TW, osp * OBS + obl, kb, k2n, xp, wp, rqb, part, out, nn, gg, osp, p0)
                        else:
                            if ch < NCH - 1:
                                for t in range(NT):
                                    tile(NP, t * TW, osp * OBS + obl, kb, k2n, xp, wp, rqb, part, out, nn, gg, osp, p0)
                            else:
                                for t in range(NTL):
                                    tile(NP, t * TW, osp * OBS + obl, kb, k2n, xp, wp, rqb, part, out, nn, gg, osp, p0)
                        if NPR > 0:
                            if ch == NCH - 1:
                                tile(NPR, NTL * TW, osp * OBS + obl, kb, k2n, xp, wp, rqb, part, out, nn, gg, osp, p0)

    info = dict(kind="pointwise" if pointwise else "im2col", mo=MO, np=NP, pb=PB, kb=KB, nkb=NKB, osplit=OS,
                epilogue=mode, fold_zp=fold, tasks=NTASK)
    return conv, info, (ho, wo)


# ----------------------------------------------------------------- depthwise conv2d


def _depthwise(n: int, c: int, h: int, wd: int, x_dtype: str, w: np.ndarray, stride, padding, dilation,
               x_zp: int, rq: Requant, out_zp: int, out_dtype: str, name: str, layout: str = "", nvec: int = 0,
               rows: int = 0):
    """Depthwise (one input channel per output channel; o // og is the input channel)
    conv2d + requantize. One parallel task per (batch, output channel) plane. The input
    plane is first widened into an int16 scratch plane padded with the zero point (so
    that every later load is a plain 32-byte load that vpmaddwd takes as its memory
    operand). Then, with a broadcast int16 weight pair (taps j, j+1 of a kernel row):
    - stride 1: 16 int16 from column x0 + j hold, in lane pairs, taps (j, j+1) of the even
      output pixels x0, x0+2, ...; from x0 + j + 1, of the odd ones (two accumulators, put
      back in order when narrowing). ``layout`` "rows": vectors of 16 pixels along each
      output row; "flat": the output rows laid on the padded input's row pitch, so that
      vectors run across rows (less waste on small planes; the columns past the output
      width are computed and dropped);
    - stride 2: 16 int16 from column 2·x0 + j hold taps (j, j+1) of 8 consecutive output
      pixels.
    Other horizontal strides use a plain int32 loop."""
    o, _, kh, kw = w.shape
    og = o // c
    (sh, sw), (pt, pbm, pl, pr), (dh, dw) = stride, padding, dilation
    ho = (h + pt + pbm - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    HP, WP = h + pt + pbm, wd + pl + pr
    paired = dw == 1
    NQ = _cdiv(kw, 2) if paired else kw  # weight pairs per kernel row
    mode, fold, odt, clamp = rq.mode, rq.fold_zp, out_dtype, rq.clamp
    pack_intr = "llvm.x86.sse2.packuswb.128" if odt == "uint8" else "llvm.x86.sse2.packsswb.128"
    max_woff = 2 * (NQ - 1) if paired else (NQ - 1) * dw  # furthest weight-pair column offset
    if layout == "flat" and (sh != 1 or sw != 1):
        raise ValueError("the flat depthwise layout needs stride 1")
    if sw == 1:
        rows_cost = ho * _cdiv(wo, 16) * 16
        flat_cost = _cdiv(ho * WP, 16) * 16 if sh == 1 else 1 << 60
        LAYOUT = layout or ("flat" if flat_cost < rows_cost or (wo < 32 and sh == 1) else "rows")
    else:
        LAYOUT = "rows"
    if LAYOUT == "flat":
        NV_FLAT = _cdiv(ho * WP, 16)
        NVEC = nvec or (2 if NV_FLAT % 2 == 0 or NV_FLAT >= 8 else 1)
        NG = _cdiv(NV_FLAT, NVEC)
        R, NYB, NXG = 1, 1, 1
        reach = NG * NVEC * 16 + (kh - 1) * dh * WP + max_woff + 1  # elements read from the plane start
    else:
        VW = 16 if sw == 1 else 8  # output pixels per vector
        NXV = _cdiv(wo, VW)
        if sw == 1:  # tuned on EfficientNet-Lite0's layers (bench/x86_kernels.py)
            NVEC = nvec or (2 if NXV == 2 else 1)
            R = rows or (1 if NVEC == 2 else 2)
        else:
            NVEC = nvec or min(NXV, 2)
            R = rows or 2
        R = max(1, min(R, ho))
        NXG = _cdiv(NXV, NVEC)
        R = _cdiv(ho, _cdiv(ho, R))  # same number of blocks, least waste
        NYB = _cdiv(ho, R)
        reach = ((NYB * R - 1) * sh + (kh - 1) * dh) * WP + NXG * NVEC * 16 + max_woff + 1
    PLANE = max(HP * WP, reach) + 16
    NII = (R - 1) * sh + (kh - 1) * dh + 1  # input rows of a block of R output rows
    EO16 = [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]

    def woff(q):
        return 2 * q if paired else q * dw

    def finish_s1(acc, base, oo, rqb):
        """16 output pixels from even (acc[base:+8]) and odd (acc[base+8:+8]) accumulators."""
        e = _requant_i32(acc[T.ramp(base, 1, 8)], 8, rqb, oo, mode, out_zp, fold, clamp)
        od = _requant_i32(acc[T.ramp(base + 8, 1, 8)], 8, rqb, oo, mode, out_zp, fold, clamp)
        w16 = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.packssdw", e, od)  # [e0-3 o0-3 | e4-7 o4-7]
        w16 = tvm.tirx.Shuffle([w16], EO16)
        return T.call_llvm_pure_intrin(f"{odt}x16", pack_intr, tvm.tirx.Shuffle([w16], list(range(8))),
                                       tvm.tirx.Shuffle([w16], list(range(8, 16))))

    def finish_s2(acc, base, nv, oo, rqb):
        return _requant_row(acc, base, nv, rqb, oo, mode, out_zp, fold, odt, clamp)

    def madd(src, base, wv):
        return T.call_llvm_pure_intrin("int32x8", PMADDWD, src[T.ramp(base, 1, 16)], wv)

    def wvec(wdw, oo, i, q):
        return T.reinterpret("int16x16", T.broadcast(wdw[oo, i, q], 8))

    @T.prim_func
    def dwconv(x: T.Buffer((n, c, h, wd), x_dtype), wdw: T.Buffer((o, kh, NQ), "int32"),
               rqb: T.Buffer((o, 8), "int32"), out: T.Buffer((n, o, ho, wo), odt)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        xf = T.decl_buffer((n * c * h * wd,), x_dtype, data=x.data)
        for task in T.parallel(n * o):
            nn = T.meta_var(task // o)
            oo = T.meta_var(task % o)
            if sw == 1 or sw == 2:
                # int16 copy of the input plane, padded with the zero point (the slack past
                # it is left as is: it only feeds outputs that are dropped)
                src = T.alloc_buffer((PLANE,), "int16", scope=_scope(PLANE * 2))
                if pt == 0 and pbm == 0 and pl == 0 and pr == 0:
                    for v in range(h * wd // 16):
                        src[T.ramp(v * 16, 1, 16)] = T.Cast("int16x16", xf[T.ramp((nn * c + oo // og) * (h * wd) + v * 16, 1, 16)])
                    for l in range(h * wd % 16):
                        src[h * wd // 16 * 16 + l] = T.Cast("int16", xf[(nn * c + oo // og) * (h * wd) + h * wd // 16 * 16 + l])
                else:
                    for yy in range(HP):
                        if yy < pt or yy >= pt + h:
                            for xx in range(WP):
                                src[yy * WP + xx] = T.int16(x_zp)
                        else:
                            for xx in range(pl):
                                src[yy * WP + xx] = T.int16(x_zp)
                            for v in range(wd // 16):
                                src[T.ramp(yy * WP + pl + v * 16, 1, 16)] = T.Cast("int16x16", x[nn, oo // og, yy - pt, T.ramp(v * 16, 1, 16)])
                            for l in range(wd % 16):
                                src[yy * WP + pl + wd // 16 * 16 + l] = T.Cast("int16", x[nn, oo // og, yy - pt, wd // 16 * 16 + l])
                            for xx in range(pr):
                                src[yy * WP + pl + wd + xx] = T.int16(x_zp)
                if LAYOUT == "flat":
                    res = T.alloc_buffer((NG * NVEC * 16,), odt, scope=_scope(NG * NVEC * 16))
                    for g in range(NG):
                        acc = T.alloc_buffer((NVEC * 16,), "int32", scope="global")
                        for v in T.unroll(NVEC):
                            acc[T.ramp(v * 16, 1, 16)] = T.broadcast(rqb[oo, 0], 16)
                        for i in T.unroll(kh):
                            for q in T.unroll(NQ):
                                for v in T.unroll(NVEC):
                                    base = T.meta_var((g * NVEC + v) * 16 + i * dh * WP + woff(q))
                                    acc[T.ramp(v * 16, 1, 8)] = acc[T.ramp(v * 16, 1, 8)] + madd(src, base, wvec(wdw, oo, i, q))
                                    acc[T.ramp(v * 16 + 8, 1, 8)] = acc[T.ramp(v * 16 + 8, 1, 8)] + madd(
                                        src, base + 1, wvec(wdw, oo, i, q))
                        for v in T.unroll(NVEC):
                            res[T.ramp((g * NVEC + v) * 16, 1, 16)] = finish_s1(acc, v * 16, oo, rqb)
                    for y in range(ho):
                        out[nn, oo, y, T.ramp(0, 1, wo)] = res[T.ramp(y * WP, 1, wo)]
                elif sw == 1:
                    for yb in range(NYB):
                        for xg in range(NXG):
                            acc = T.alloc_buffer((R * NVEC * 16,), "int32", scope="global")
                            for r in T.unroll(R):
                                for v in T.unroll(NVEC):
                                    acc[T.ramp((r * NVEC + v) * 16, 1, 16)] = T.broadcast(rqb[oo, 0], 16)
                            # grouped by input row ii = r·sh + i·dh, so a row's loads are used at once
                            for ii in T.unroll(NII):
                                for r in T.unroll(R):
                                    if ii - r * sh >= 0 and ii - r * sh < kh * dh and (ii - r * sh) % dh == 0:
                                        for q in T.unroll(NQ):
                                            for v in T.unroll(NVEC):
                                                base = T.meta_var((yb * R * sh + ii) * WP + (xg * NVEC + v) * 16 + woff(q))
                                                acc[T.ramp((r * NVEC + v) * 16, 1, 8)] = acc[T.ramp((r * NVEC + v) * 16, 1, 8)] + madd(
                                                    src, base, wvec(wdw, oo, (ii - r * sh) // dh, q))
                                                acc[T.ramp((r * NVEC + v) * 16 + 8, 1, 8)] = acc[T.ramp((r * NVEC + v) * 16 + 8, 1, 8)] + madd(
                                                    src, base + 1, wvec(wdw, oo, (ii - r * sh) // dh, q))
                            for r in T.unroll(R):
                                if yb * R + r < ho:
                                    for v in T.unroll(NVEC):
                                        x0 = T.meta_var((xg * NVEC + v) * 16)
                                        if x0 + 16 <= wo:
                                            out[nn, oo, yb * R + r, T.ramp(x0, 1, 16)] = finish_s1(acc, (r * NVEC + v) * 16, oo, rqb)
                                        else:
                                            if x0 < wo:
                                                res = T.alloc_buffer((16,), odt, scope="global")
                                                res[T.ramp(0, 1, 16)] = finish_s1(acc, (r * NVEC + v) * 16, oo, rqb)
                                                for l in range(16):
                                                    if x0 + l < wo:
                                                        out[nn, oo, yb * R + r, x0 + l] = res[l]
                else:
                    for yb in range(NYB):
                        for xg in range(NXG):
                            acc = T.alloc_buffer((R * NVEC * 8,), "int32", scope="global")
                            for r in T.unroll(R):
                                for v in T.unroll(NVEC):
                                    acc[T.ramp((r * NVEC + v) * 8, 1, 8)] = T.broadcast(rqb[oo, 0], 8)
                            for ii in T.unroll(NII):
                                for r in T.unroll(R):
                                    if ii - r * sh >= 0 and ii - r * sh < kh * dh and (ii - r * sh) % dh == 0:
                                        for q in T.unroll(NQ):
                                            for v in T.unroll(NVEC):
                                                base = T.meta_var((yb * R * sh + ii) * WP + (xg * NVEC + v) * 16 + woff(q))
                                                acc[T.ramp((r * NVEC + v) * 8, 1, 8)] = acc[T.ramp((r * NVEC + v) * 8, 1, 8)] + madd(
                                                    src, base, wvec(wdw, oo, (ii - r * sh) // dh, q))
                            for r in T.unroll(R):
                                if yb * R + r < ho:
                                    x0 = T.meta_var(xg * NVEC * 8)
                                    if x0 + NVEC * 8 <= wo:
                                        out[nn, oo, yb * R + r, T.ramp(x0, 1, NVEC * 8)] = finish_s2(acc, r * NVEC * 8, NVEC, oo, rqb)
                                    else:
                                        res = T.alloc_buffer((NVEC * 8,), odt, scope="global")
                                        res[T.ramp(0, 1, NVEC * 8)] = finish_s2(acc, r * NVEC * 8, NVEC, oo, rqb)
                                        for l in range(NVEC * 8):
                                            if x0 + l < wo:
                                                out[nn, oo, yb * R + r, x0 + l] = res[l]
            else:
                for y in range(ho):
                    for xx in range(wo):
                        acc1 = T.alloc_buffer((1,), "int32", scope="global")
                        acc1[0] = rqb[oo, 0]
                        for i in range(kh):
                            for q in range(NQ):
                                wpair = T.meta_var(wdw[oo, i, q])
                                yy = T.meta_var(y * sh + i * dh - pt)
                                xa = T.meta_var(xx * sw + woff(q) - pl)
                                acc1[0] = acc1[0] + T.if_then_else(
                                    yy >= 0 and yy < h and xa >= 0 and xa < wd,
                                    T.Cast("int32", x[nn, oo // og, T.max(T.min(yy, h - 1), 0), T.max(T.min(xa, wd - 1), 0)]),
                                    x_zp) * ((wpair << 16) >> 16)
                                if paired:
                                    acc1[0] = acc1[0] + T.if_then_else(
                                        yy >= 0 and yy < h and xa + 1 >= 0 and xa + 1 < wd,
                                        T.Cast("int32", x[nn, oo // og, T.max(T.min(yy, h - 1), 0), T.max(T.min(xa + 1, wd - 1), 0)]),
                                        x_zp) * (wpair >> 16)
                        out[nn, oo, y, xx] = T.Cast(odt, _requant_i32(acc1[0], 1, rqb, oo, mode, out_zp, fold))

    info = dict(kind="depthwise", layout=LAYOUT, nvec=NVEC, rows=R, epilogue=mode, fold_zp=fold, clamp=clamp,
                tasks=n * o)
    return dwconv, info


# ----------------------------------------------------------------- linear (dense)


def _dense(m: int, k: int, o: int, x_dtype: str, rq: Requant, out_zp: int, out_dtype: str, name: str,
           vo: int = 4, mr: int = 0, x_shape: Optional[tuple] = None):
    """out[m, o] = requantize(Σ_k x[m, k]·w[o, k] + bias'[o]): output channels in the
    vector lanes. The weights stay int8 (sign-extended to int16 pairs on load,
    vpmovsxbw: half the memory traffic of int16 weights; batch-1 dense layers are bound
    by it), laid out [o-tile][k/2][vo·8 outputs][2]. Activation pairs (x[2k'], x[2k'+1])
    are broadcast as one int32. Tiles of ``vo`` vectors of 8 outputs × ``mr`` rows,
    parallel over output tiles."""
    K2 = _cdiv(k, 2)
    OT = _cdiv(o, 8 * vo)
    OP = OT * 8 * vo
    MR = mr or min(m, 3)
    NMB = _cdiv(m, MR)
    mode, fold, odt, clamp = rq.mode, rq.fold_zp, out_dtype, rq.clamp
    signed_x = x_dtype == "int8"
    VO = vo
    xs = tuple(x_shape) if x_shape is not None else (m, k)
    os_ = xs[:-1] + (o,)

    def lo16(v):
        return (v & 0xFFFF) if signed_x else v

    @T.prim_func
    def dense(xnd: T.Buffer(xs, x_dtype), wq: T.Buffer((OT, K2, VO * 16), "int8"), rqt: T.Buffer((8, OP), "int32"),
              outnd: T.Buffer(os_, odt)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((m, k), x_dtype, data=xnd.data)
        out = T.decl_buffer((m, o), odt, data=outnd.data)
        xp = T.alloc_buffer((NMB * MR, K2), "int32", scope="local")
        for r in T.parallel(NMB * MR):
            for k2 in range(K2):
                xp[r, k2] = T.if_then_else(r < m, lo16(T.Cast("int32", x[T.min(r, m - 1), k2 * 2])) | (
                    T.Cast("int32", x[T.min(r, m - 1), T.min(k2 * 2 + 1, k - 1)]) << 16), 0)
        for task in T.parallel(OT * NMB):
            ot = T.meta_var(task // NMB)
            mb = T.meta_var(task % NMB)
            acc = T.alloc_buffer((MR * VO * 8,), "int32", scope="global")
            for r in T.unroll(MR):
                for v in T.unroll(VO):
                    acc[T.ramp((r * VO + v) * 8, 1, 8)] = rqt[0, T.ramp((ot * VO + v) * 8, 1, 8)]
            for k2 in range(K2):
                for v in T.unroll(VO):
                    for r in T.unroll(MR):
                        acc[T.ramp((r * VO + v) * 8, 1, 8)] = acc[T.ramp((r * VO + v) * 8, 1, 8)] + T.call_llvm_pure_intrin(
                            "int32x8", PMADDWD, T.Cast("int16x16", wq[ot, k2, T.ramp(v * 16, 1, 16)]),
                            T.reinterpret("int16x16", T.broadcast(xp[mb * MR + r, k2], 8)))
            for r in T.unroll(MR):
                if mb * MR + r < m:
                    for v in T.unroll(VO):
                        o0 = T.meta_var((ot * VO + v) * 8)
                        if o0 + 8 <= o:
                            out[mb * MR + r, T.ramp(o0, 1, 8)] = _narrow8(_requant_lanes(
                                acc[T.ramp((r * VO + v) * 8, 1, 8)], lambda j: rqt[j, T.ramp(o0, 1, 8)], mode, out_zp, fold,
                                clamp), odt)
                        else:
                            if o0 < o:
                                res = T.alloc_buffer((8,), odt, scope="global")
                                res[T.ramp(0, 1, 8)] = _narrow8(_requant_lanes(
                                    acc[T.ramp((r * VO + v) * 8, 1, 8)], lambda j: rqt[j, T.ramp(o0, 1, 8)], mode, out_zp,
                                    fold, clamp), odt)
                                for l in range(8):
                                    if o0 + l < o:
                                        out[mb * MR + r, o0 + l] = res[l]

    info = dict(kind="dense", vo=VO, mr=MR, epilogue=mode, fold_zp=fold, clamp=clamp, tasks=OT * NMB)
    return dense, info


# ----------------------------------------------------------------- public API


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
    ``padding`` is the conv's (ph, pw) or an explicit (top, bottom, left, right): the
    latter takes in a zero-point ``constant_pad_nd`` before the conv (TensorFlow's "same"
    padding of stride-2 layers pads one more at the bottom and right), so that the padded
    input is never written out.

    Returns ``(func, consts)``: ``func(x, *consts, out)`` writes ``out`` [N, O, Ho, Wo]
    (``out_dtype``); ``consts`` are numpy arrays to pass as constants:
    - GEMM kernels (pointwise, im2col): weights int32 [G, O/G/mo, K/2, mo] (int16 pairs of
      consecutive (c, i, j) reduction indices), requantize rows int32 [G·(O/G padded), 8];
    - depthwise: weight pairs int32 [O, kh, ⌈kw/2⌉] (or [O, kh, kw] with horizontal
      dilation), requantize rows int32 [O, 8].
    Requantize row: [bias − z·Σw, m, rounding term, shift, lo, hi, 0, 0] (see
    ``requant_constants``). ``threads``: runtime threads to plan for (default
    ``default_threads()``); ``plan`` / ``dw_opts``: override the tiling (benchmarks, tests).
    ``u8s8=True``: for a uint8 pointwise conv (groups 1), the exact ``vpmaddubsw`` kernel of
    ``x86_u8s8`` instead (consts: entry index, entry weights, block offsets, requantize
    rows). It is off by default: on EfficientNet-Lite0 it is slower in the network
    (docs/results.md).
    Raises ``ExactnessError`` when exactness cannot be guaranteed.
    """
    check_target(target)
    if mult is None or shift is None:
        raise ValueError("mult and shift (the requantize multiplier) are required")
    x_dtype, out_dtype = str(x_dtype), str(out_dtype)
    if x_dtype not in ("uint8", "int8") or out_dtype not in ("uint8", "int8"):
        raise ExactnessError(f"x dtype {x_dtype} / out dtype {out_dtype}: only uint8/int8 are supported")
    n, c, h, wd = (int(s) for s in x_shape)
    w = np.asarray(w)
    if w.dtype != np.int8 and (w.min(initial=0) < -128 or w.max(initial=0) > 127):
        raise ExactnessError("weights must be int8")
    w = w.astype(np.int8)
    o, cg, kh, kw = w.shape
    groups = int(groups)
    if c != cg * groups or o % groups:
        raise ValueError(f"conv2d shapes: x {x_shape}, w {w.shape}, groups {groups}")
    stride, padding, dilation = (tuple(int(v) for v in a) for a in (stride, padding, dilation))
    padding = _pad4(padding)
    ch = _prepare_channels(w.reshape(o, -1), bias, x_dtype, int(x_zp), mult, shift, int(out_zp), lo, hi)
    w2, w = ch.w2, ch.w2.reshape(w.shape)
    og = o // groups
    K = cg * kh * kw
    (sh, sw), (pt, pbm, pl, pr), (dh, dw) = stride, padding, dilation
    ho = (h + pt + pbm - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError("empty conv2d output")
    if cg == 1:  # depthwise (or depthwise with a channel multiplier)
        rq = requant_constants(ch.bias, mult, shift, ch.lo, ch.hi, o, int(out_zp), out_dtype, ch.acc_bound,
                               const=ch.const)
        paired = int(dilation[1]) == 1
        nq = _cdiv(kw, 2) if paired else kw
        w16 = np.zeros((o, kh, nq, 2), np.int16)
        if paired:
            w16.reshape(o, kh, nq * 2)[:, :, :kw] = w[:, 0]
        else:
            w16[:, :, :, 0] = w[:, 0]
        func, info = _depthwise(n, c, h, wd, x_dtype, w, stride, padding, dilation, int(x_zp), rq, int(out_zp),
                                out_dtype, name, **(dw_opts or {}))
        return func.with_attr("qcompiler.kernel", info), [np.ascontiguousarray(w16.view(np.int32).reshape(o, kh, nq)), rq.rq]
    if u8s8 and x_dtype == "uint8" and groups == 1 and kh == kw == 1 and stride == (1, 1) \
            and padding == (0, 0, 0, 0):
        from dataclasses import replace

        from .x86_u8s8 import pointwise_u8s8

        plan = replace(choose_plan(_cdiv(K, 4), ho * wo, o, n, threads or default_threads(), plan), mo=1)
        rq = requant_constants(ch.bias, mult, shift, ch.lo, ch.hi, o, int(out_zp), out_dtype, ch.acc_bound,
                               const=ch.const)
        func, consts, info = pointwise_u8s8(n, c, h, wd, w.reshape(o, K), rq, int(out_zp), out_dtype, plan, name)
        return func.with_attr("qcompiler.kernel", info), [*consts, rq.rq]
    plan = choose_plan(_cdiv(K, 2), ho * wo, og, n * groups, threads or default_threads(), plan)
    OB = _cdiv(og, plan.mo)
    rows = np.array([gg * og + r if r < og else -1 for gg in range(groups) for r in range(OB * plan.mo)])
    rq = requant_constants(ch.bias, mult, shift, ch.lo, ch.hi, o, int(out_zp), out_dtype, ch.acc_bound, rows=rows,
                           const=ch.const)
    wp = _pack_weights_pairs(w2.reshape(groups, og, K), plan.mo)
    func, info, _ = _gemm_conv(n, c, h, wd, x_dtype, w, stride, padding, dilation, groups, int(x_zp), rq, int(out_zp),
                               out_dtype, plan, name)
    func = func.with_attr("qcompiler.kernel", info)
    return func, [wp, rq.rq]


def linear_requant_primfunc(x_shape: Sequence[int], x_dtype: str, w: np.ndarray, bias, x_zp: int, mult, shift,
                            out_zp: int = 0, lo=0, hi=255, out_dtype: str = "uint8",
                            target: Optional[tvm.target.Target] = None, name: str = "linear_requant", vo: int = 4):
    """A fused linear + requantize PrimFunc (``qcompiler.kernels.linear``: x [..., K] ·
    w[O, K]ᵀ + bias, requantized per output channel) for the x86 ``target``, and its
    constants: ``func(x, *consts, out)``, out [..., O]. consts: weights int8
    [⌈O/32⌉, ⌈K/2⌉, 64] (32 outputs × 2 reduction indices per row) and the requantize
    columns int32 [8, O padded to 32] (the rows of ``requant_constants``, transposed)."""
    check_target(target)
    x_dtype, out_dtype = str(x_dtype), str(out_dtype)
    if x_dtype not in ("uint8", "int8") or out_dtype not in ("uint8", "int8"):
        raise ExactnessError(f"x dtype {x_dtype} / out dtype {out_dtype}: only uint8/int8 are supported")
    x_shape = tuple(int(v) for v in x_shape)
    w = np.asarray(w)
    if w.min(initial=0) < -128 or w.max(initial=0) > 127:
        raise ExactnessError("weights must be int8")
    w = w.astype(np.int8)
    o, k = w.shape
    if x_shape[-1] != k:
        raise ValueError(f"linear shapes: x {x_shape}, w {w.shape}")
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    ch = _prepare_channels(w, bias, x_dtype, int(x_zp), mult, shift, int(out_zp), lo, hi)
    w = ch.w2
    rq = requant_constants(ch.bias, mult, shift, ch.lo, ch.hi, o, int(out_zp), out_dtype, ch.acc_bound,
                               const=ch.const)
    k2 = _cdiv(k, 2)
    ot = _cdiv(o, 8 * vo)
    w8 = np.zeros((ot * vo * 8, k2 * 2), np.int8)
    w8[:o, :k] = w
    # [OT][K2][VO·8 outputs][2 taps]
    wq = np.ascontiguousarray(w8.reshape(ot, vo * 8, k2, 2).transpose(0, 2, 1, 3)).reshape(ot, k2, vo * 16)
    rqt = np.zeros((8, ot * vo * 8), np.int32)
    rqt[:, :o] = rq.rq.T
    rqt[1, o:] = 1 << 30
    rqt[3, o:] = 8
    rqt[5, o:] = 255
    func, info = _dense(m, k, o, x_dtype, rq, int(out_zp), out_dtype, name, vo=vo, x_shape=x_shape)
    return func.with_attr("qcompiler.kernel", info), [wq, rqt]


