"""An exact u8×s8 pointwise (1×1) conv2d + requantize kernel for AVX2, with ``vpmaddubsw``
where the weights prove it cannot saturate.

``vpmaddubsw`` multiplies 32 unsigned bytes by 32 signed bytes and sums adjacent products
in pairs into *saturating* int16: 32 multiply-adds per instruction, but a pair sum
a0·w0 + a1·w1 with a ∈ [0, 255] leaves int16 when the pair's positive weights sum past
128 (255·129 > 32767) or its negative weights past 128 in magnitude. ONNX Runtime's AVX2
int8 kernels use it unguarded, which is where their accuracy goes. Here every weight pair
is checked: a pair whose same-sign magnitudes sum to at most 128 is safe for every uint8
input; an unsafe pair is split into two safe ones (w = ⌈w/2⌉ + ⌊w/2⌋, each |half| ≤ 64)
that multiply the same activations. Quads of reduction indices are the unit: per output
channel, a list of (quad index, 4 weight bytes) entries, a quad listed twice when split.
Inner loop, per entry and 8 pixels: ``vpmaddubsw`` (u8 quad × s8 quad → 2 int16 pair
sums) then ``vpmaddwd`` by ones (→ the int32 quad sum) and ``vpaddd``.

Activations must be uint8 (the zero point is folded into the bias, as in
``x86_int8``); outputs uint8 or int8. Used by ``x86_int8.conv2d_requant_primfunc`` for
uint8 pointwise convs when asked (``u8s8=True``): on this Zen 3 CPU it is exact but not
faster than the ``vpmaddwd`` kernel (same two multiply instructions per 32 MACs, plus the
indexed entries), see docs/results.md.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .int8_common import _cdiv, _scope
from .x86_int8 import PMADDWD, GemmPlan, Requant, _requant_row

PMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"

__all__ = ["quad_entries", "pointwise_u8s8"]


def _safe(pair: np.ndarray) -> np.ndarray:
    """[..., 2] int weights → bool [...]: the pair sum cannot saturate int16 for u8 inputs."""
    pos = np.maximum(pair, 0).sum(-1)
    neg = np.maximum(-pair, 0).sum(-1)
    return (pos <= 128) & (neg <= 128)


def quad_entries(w: np.ndarray, kb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per output channel of ``w`` [O, K] int8: its entries as (quad index, int32 of 4 weight
    bytes), sorted by quad, a quad whose pairs are not all safe given twice (its two safe
    halves); zero quads dropped. Returns (index int32 [O, E], weights int32 [O, E], offsets
    int32 [O, NKB + 1]: entries of reduction block b are offsets[o, b]:offsets[o, b+1], with
    blocks of ``kb`` quads; E: the longest list."""
    o, k = w.shape
    k4 = _cdiv(k, 4)
    nkb = _cdiv(k4, kb)
    wq = np.zeros((o, k4 * 4), np.int64)
    wq[:, :k] = w
    wq = wq.reshape(o, k4, 4)
    safe = _safe(wq.reshape(o, k4, 2, 2)).all(-1)
    hi = -(-wq // 2)  # ⌈w/2⌉
    lo = wq // 2  # ⌊w/2⌋
    rows = []
    for oo in range(o):
        entries = []
        for q in range(k4):
            if not wq[oo, q].any():
                continue
            parts = [wq[oo, q]] if safe[oo, q] else [hi[oo, q], lo[oo, q]]
            entries += [(q, p) for p in parts if p.any()]
        rows.append(entries)
    e = max(1, max(len(r) for r in rows))
    index = np.zeros((o, e), np.int32)
    weights = np.zeros((o, e), np.int32)
    offsets = np.zeros((o, nkb + 1), np.int32)
    for oo, entries in enumerate(rows):
        for j, (q, p) in enumerate(entries):
            index[oo, j] = q
            weights[oo, j] = np.frombuffer(p.astype(np.int8).tobytes(), np.int32)[0]  # 4 bytes, little endian
        quads = np.array([q for q, _ in entries], np.int64)
        offsets[oo] = np.searchsorted(quads, np.arange(nkb + 1) * kb, side="left")
    return index, weights, offsets, e


def pointwise_u8s8(n: int, c: int, h: int, wd: int, w: np.ndarray, rq: Requant, out_zp: int, out_dtype: str,
                   plan: GemmPlan, name: str):
    """The kernel and its weight constants for a pointwise conv (groups 1) of uint8 x
    [n, c, h, wd] with ``w`` [O, c] int8 (after ``_prepare_channels``), tiled by ``plan``
    (mo must be 1; kb counts quads). Returns (func, [index, weights, offsets], info);
    ``func(x, index, weights, offsets, rq, out)``."""
    o = w.shape[0]
    P = h * wd
    K4 = _cdiv(c, 4)
    NP = plan.np_
    TW = NP * 8
    PB = plan.pb
    KB = plan.kb
    NKB = _cdiv(K4, KB)
    NCH = _cdiv(P, PB)
    NT = PB // TW
    RL = P - (NCH - 1) * PB
    NVL = _cdiv(RL, 8)
    NTL, NPR = NVL // NP, NVL % NP
    OS = max(1, min(plan.osplit, o))
    OBS = _cdiv(o, OS)
    NTASK = n * NCH * OS
    XPW = PB + 8
    PART = OBS * PB if NKB > 1 else 1
    index, weights, offsets, E = quad_entries(w, KB)
    mode, fold, odt, clamp = rq.mode, rq.fold_zp, out_dtype, rq.clamp
    ones = tvm.tirx.const(0x00010001, "int32")

    @T.macro
    def tile(nv, tp, oc, kb, xq, eidx, ew, off, rqb, part, out, nn, osp, p0):
        acc = T.alloc_buffer((nv * 8,), "int32", scope="global")
        for v in T.unroll(nv):
            if NKB == 1:
                acc[T.ramp(v * 8, 1, 8)] = T.broadcast(rqb[oc, 0], 8)
            else:
                acc[T.ramp(v * 8, 1, 8)] = T.if_then_else(
                    kb == 0, T.broadcast(rqb[oc, 0], 8), part[T.ramp((oc - osp * OBS) * PB + tp + v * 8, 1, 8)])
        for j in range(off[oc, kb], off[oc, kb + 1]):
            q = T.meta_var(eidx[oc, j] - kb * KB)
            wv = T.meta_var(T.reinterpret("int8x32", T.broadcast(ew[oc, j], 8)))
            for v in T.unroll(nv):
                acc[T.ramp(v * 8, 1, 8)] = acc[T.ramp(v * 8, 1, 8)] + T.call_llvm_pure_intrin(
                    "int32x8", PMADDWD,
                    T.call_llvm_pure_intrin("int16x16", PMADDUBSW,
                                            T.reinterpret("int8x32", xq[q, T.ramp(tp + v * 8, 1, 8)]), wv),
                    T.reinterpret("int16x16", T.broadcast(ones, 8)))
        if NKB > 1:
            if kb < NKB - 1:
                for v in T.unroll(nv):
                    part[T.ramp((oc - osp * OBS) * PB + tp + v * 8, 1, 8)] = acc[T.ramp(v * 8, 1, 8)]
        if NKB == 1 or kb == NKB - 1:
            pp = T.meta_var(p0 + tp)
            if pp + nv * 8 <= P:
                out[nn, oc, T.ramp(pp, 1, nv * 8)] = _requant_row(acc, 0, nv, rqb, oc, mode, out_zp, fold, odt, clamp)
            else:
                res = T.alloc_buffer((nv * 8,), odt, scope="global")
                res[T.ramp(0, 1, nv * 8)] = _requant_row(acc, 0, nv, rqb, oc, mode, out_zp, fold, odt, clamp)
                for l in range(nv * 8):
                    if pp + l < P:
                        out[nn, oc, pp + l] = res[l]

    @T.prim_func
    def conv(x4: T.Buffer((n, c, h, wd), "uint8"), eidx: T.Buffer((o, E), "int32"), ew: T.Buffer((o, E), "int32"),
             off: T.Buffer((o, NKB + 1), "int32"), rqb: T.Buffer((o, 8), "int32"), out4: T.Buffer((n, o, h, wd), odt)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((n, c, P), "uint8", data=x4.data)
        out = T.decl_buffer((n, o, P), odt, data=out4.data)
        for task in T.parallel(NTASK):
            osp = T.meta_var(task // (n * NCH))
            nn = T.meta_var(task // NCH % n)
            ch = T.meta_var(task % NCH)
            p0 = T.meta_var(ch * PB)
            xq = T.alloc_buffer((KB, XPW), "int32", scope=_scope(KB * XPW * 4))
            part = T.alloc_buffer((PART,), "int32", scope=_scope(PART * 4))
            for kb in range(NKB):
                k4n = T.meta_var(T.min(KB, K4 - kb * KB) if K4 % KB != 0 else KB)
                # pack quads of channels: xq[k4, p] = bytes x[4k4 .. 4k4+3, p] (channels past c
                # repeat the last one: their weights are zero)
                for k4 in range(k4n):
                    cq = T.meta_var((kb * KB + k4) * 4)
                    for v in range(PB // 8):
                        if p0 + v * 8 + 8 <= P:
                            xq[k4, T.ramp(v * 8, 1, 8)] = (
                                T.Cast("int32x8", x[nn, T.min(cq, c - 1), T.ramp(p0 + v * 8, 1, 8)])
                                | (T.Cast("int32x8", x[nn, T.min(cq + 1, c - 1), T.ramp(p0 + v * 8, 1, 8)]) << T.broadcast(8, 8))
                                | (T.Cast("int32x8", x[nn, T.min(cq + 2, c - 1), T.ramp(p0 + v * 8, 1, 8)]) << T.broadcast(16, 8))
                                | (T.Cast("int32x8", x[nn, T.min(cq + 3, c - 1), T.ramp(p0 + v * 8, 1, 8)]) << T.broadcast(24, 8)))
                        else:
                            for l in range(8):
                                if p0 + v * 8 + l < P:
                                    xq[k4, v * 8 + l] = (
                                        T.Cast("int32", x[nn, T.min(cq, c - 1), p0 + v * 8 + l])
                                        | (T.Cast("int32", x[nn, T.min(cq + 1, c - 1), p0 + v * 8 + l]) << 8)
                                        | (T.Cast("int32", x[nn, T.min(cq + 2, c - 1), p0 + v * 8 + l]) << 16)
                                        | (T.Cast("int32", x[nn, T.min(cq + 3, c - 1), p0 + v * 8 + l]) << 24))
                for obl in range(OBS):
                    if osp * OBS + obl < o:
                        oc = T.meta_var(osp * OBS + obl)
                        if NCH == 1:
                            for t in range(NTL):
                                tile(NP, t * TW, oc, kb, xq, eidx, ew, off, rqb, part, out, nn, osp, p0)
                        else:
                            if ch < NCH - 1:
                                for t in range(NT):
                                    tile(NP, t * TW, oc, kb, xq, eidx, ew, off, rqb, part, out, nn, osp, p0)
                            else:
                                for t in range(NTL):
                                    tile(NP, t * TW, oc, kb, xq, eidx, ew, off, rqb, part, out, nn, osp, p0)
                        if NPR > 0:
                            if ch == NCH - 1:
                                tile(NPR, NTL * TW, oc, kb, xq, eidx, ew, off, rqb, part, out, nn, osp, p0)

    info = dict(kind="pointwise_u8s8", mo=1, np=NP, pb=PB, kb=KB, nkb=NKB, osplit=OS, epilogue=mode, fold_zp=fold,
                tasks=NTASK, entries=int(offsets[:, -1].sum()), quads=int(o * K4))
    return conv, [index, weights, offsets], info
