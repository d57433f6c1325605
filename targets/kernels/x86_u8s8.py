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
the ``vpmaddwd`` kernels); outputs uint8 or int8. Used by ``kernels/x86.conv2d_requant_primfunc`` for
uint8 pointwise convs when asked (``u8s8=True``): on this Zen 3 CPU it is exact but not
faster than the ``vpmaddwd`` kernel (same two multiply instructions per 32 MACs, plus the
indexed entries), see docs/results.md.

Note: TVMScript parses a function from its source file when it is built; editing this
file while a build is running makes that build fail.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from ..intrinsics.x86_avx2 import PMADDUBSW, PMADDWD
from .contract import ceil_div
from .geometry import ConvGeometry
from .requant import RequantColumn as Col, RequantRows
from .tiling import BlockedTasks, GemmPlan, PixelChunks, blocked_task_macro, chunk_dispatch
from .x86_epilogue import requant_row

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
    int32 [O, blocks + 1]: entries of reduction block b are offsets[o, b]:offsets[o, b+1], with
    blocks of ``kb`` quads; E: the longest list."""
    o, k = w.shape
    k4 = ceil_div(k, 4)
    blocks = ceil_div(k4, kb)
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
    offsets = np.zeros((o, blocks + 1), np.int32)
    for oo, entries in enumerate(rows):
        for j, (q, p) in enumerate(entries):
            index[oo, j] = q
            weights[oo, j] = np.frombuffer(p.astype(np.int8).tobytes(), np.int32)[0]  # 4 bytes, little endian
        quads = np.array([q for q, _ in entries], np.int64)
        offsets[oo] = np.searchsorted(quads, np.arange(blocks + 1) * kb, side="left")
    return index, weights, offsets, e


def _tile_macro(o: int, pixels: int, plan: GemmPlan, n_blocks: int, per_split: int, rq: RequantRows, out_zp: int,
                out_dtype: str):
    """The register tile of one output channel × nv vectors at chunk pixel ``first``."""
    chunk, block = plan.pb, plan.kb
    ones = tvm.tirx.const(0x00010001, "int32")

    @T.macro
    def tile(nv, first, oc, kb, xq, eidx, ew, off, rqb, part, out, nn, osp, p0):
        acc = T.alloc_buffer((nv * 8,), "int32", scope="global")
        for v in T.unroll(nv):
            if n_blocks == 1:
                acc[T.ramp(v * 8, 1, 8)] = T.broadcast(rqb[oc, Col.BIAS], 8)
            else:
                acc[T.ramp(v * 8, 1, 8)] = T.if_then_else(
                    kb == 0, T.broadcast(rqb[oc, Col.BIAS], 8),
                    part[T.ramp((oc - osp * per_split) * chunk + first + v * 8, 1, 8)])
        for j in range(off[oc, kb], off[oc, kb + 1]):
            q = T.meta_var(eidx[oc, j] - kb * block)
            wv = T.meta_var(T.reinterpret("int8x32", T.broadcast(ew[oc, j], 8)))
            for v in T.unroll(nv):
                acc[T.ramp(v * 8, 1, 8)] = acc[T.ramp(v * 8, 1, 8)] + PMADDWD(
                    PMADDUBSW(T.reinterpret("int8x32", xq[q, T.ramp(first + v * 8, 1, 8)]), wv),
                    T.reinterpret("int16x16", T.broadcast(ones, 8)))
        if n_blocks > 1:
            if kb < n_blocks - 1:
                for v in T.unroll(nv):
                    part[T.ramp((oc - osp * per_split) * chunk + first + v * 8, 1, 8)] = acc[T.ramp(v * 8, 1, 8)]
        if n_blocks == 1 or kb == n_blocks - 1:
            pp = T.meta_var(p0 + first)
            if pp + nv * 8 <= pixels:
                out[nn, oc, T.ramp(pp, 1, nv * 8)] = requant_row(acc, 0, nv, rqb, oc, rq, out_zp, out_dtype)
            else:
                res = T.alloc_buffer((nv * 8,), out_dtype, scope="global")
                res[T.ramp(0, 1, nv * 8)] = requant_row(acc, 0, nv, rqb, oc, rq, out_zp, out_dtype)
                for lane in range(nv * 8):
                    if pp + lane < pixels:
                        out[nn, oc, pp + lane] = res[lane]
    return tile


def _pack_quads_macro(c: int, pixels: int, chunk: int):
    """xq[k4, p] = bytes x[4k4 .. 4k4+3, p0 + p] (channels past c repeat the last one:
    their weights are zero)."""
    def quad(x, nn, cq, p):
        return (T.Cast("int32x8", x[nn, T.min(cq, c - 1), T.ramp(p, 1, 8)])
                | (T.Cast("int32x8", x[nn, T.min(cq + 1, c - 1), T.ramp(p, 1, 8)]) << T.broadcast(8, 8))
                | (T.Cast("int32x8", x[nn, T.min(cq + 2, c - 1), T.ramp(p, 1, 8)]) << T.broadcast(16, 8))
                | (T.Cast("int32x8", x[nn, T.min(cq + 3, c - 1), T.ramp(p, 1, 8)]) << T.broadcast(24, 8)))

    def quad1(x, nn, cq, p):
        return (T.Cast("int32", x[nn, T.min(cq, c - 1), p]) | (T.Cast("int32", x[nn, T.min(cq + 1, c - 1), p]) << 8)
                | (T.Cast("int32", x[nn, T.min(cq + 2, c - 1), p]) << 16)
                | (T.Cast("int32", x[nn, T.min(cq + 3, c - 1), p]) << 24))

    @T.macro
    def pack(x, xq, nn, kb, k4n, p0, block):
        for k4 in range(k4n):
            cq = T.meta_var((kb * block + k4) * 4)
            for v in range(chunk // 8):
                if p0 + v * 8 + 8 <= pixels:
                    xq[k4, T.ramp(v * 8, 1, 8)] = quad(x, nn, cq, p0 + v * 8)
                else:
                    for lane in range(8):
                        if p0 + v * 8 + lane < pixels:
                            xq[k4, v * 8 + lane] = quad1(x, nn, cq, p0 + v * 8 + lane)
    return pack


def pointwise_u8s8(geom: ConvGeometry, weights: np.ndarray, rq: RequantRows, out_zp: int, out_dtype: str,
                   plan: GemmPlan, name: str):
    """The kernel and its weight constants for a pointwise conv (groups 1) of uint8 x with
    ``weights`` [O, C] int8 (after ``prepare_channels``), tiled by ``plan`` (mo must be 1;
    kb counts quads). Returns (func, [index, weights, offsets], info);
    ``func(x, index, weights, offsets, requant_rows, out)``."""
    n, c, h, wd, o = geom.batch, geom.channels, geom.height, geom.width, geom.out_channels
    pixels, quads, block = h * wd, ceil_div(c, 4), plan.kb
    n_blocks = ceil_div(quads, block)
    chunks = PixelChunks(pixels, plan.pb, plan.np_, 8)
    splits = max(1, min(plan.osplit, o))
    per_split = ceil_div(o, splits)
    tasks = n * chunks.count * splits
    packed_width, partial = plan.pb + 8, (per_split * plan.pb if n_blocks > 1 else 1)
    index, entry_weights, offsets, longest = quad_entries(weights, block)
    run_tiles = chunk_dispatch(chunks, _tile_macro(o, pixels, plan, n_blocks, per_split, rq, out_zp, out_dtype))
    pack = _pack_quads_macro(c, pixels, plan.pb)

    @T.macro
    def quad_block(xq, part, osp, nn, gg, ch, p0, kb, k4n, x, eidx, ew, off, rqb, out):
        pack(x, xq, nn, kb, k4n, p0, block)
        for obl in range(per_split):
            if osp * per_split + obl < o:
                run_tiles(ch, osp * per_split + obl, kb, xq, eidx, ew, off, rqb, part, out, nn, osp, p0)

    run_task = blocked_task_macro(BlockedTasks(n, 1, chunks, block, quads, packed_width, partial), quad_block)

    @T.prim_func
    def conv(x4: T.Buffer((n, c, h, wd), "uint8"), eidx: T.Buffer((o, longest), "int32"),
             ew: T.Buffer((o, longest), "int32"), off: T.Buffer((o, n_blocks + 1), "int32"),
             rqb: T.Buffer((o, 8), "int32"), out4: T.Buffer((n, o, h, wd), out_dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((n, c, pixels), "uint8", data=x4.data)
        out = T.decl_buffer((n, o, pixels), out_dtype, data=out4.data)
        for task in T.parallel(tasks):
            run_task(task, x, eidx, ew, off, rqb, out)

    info = dict(kind="pointwise_u8s8", mo=1, np=plan.np_, pb=plan.pb, kb=block, nkb=n_blocks, osplit=splits,
                epilogue=rq.mode, fold_zp=rq.fold_zp, tasks=tasks, entries=int(offsets[:, -1].sum()),
                quads=int(o * quads))
    return conv, [index, entry_weights, offsets], info
