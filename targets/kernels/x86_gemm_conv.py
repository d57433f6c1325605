"""conv2d + requantize as a GEMM on x86 AVX2 (``vpmaddwd``): the "pointwise" (1×1,
stride 1, no padding) and "im2col" kernels of ``kernels/x86.py``.

out[o, p] = Σ_k w[o, k]·x[k, p] over output pixels p. Per parallel task (batch, group,
chunk of output pixels[, output-channel split]) and per reduction block (≤ 16 KB of
packed input: L1), the input is packed as int16 pairs of consecutive k, one int32 per
pair: ``packed[k/2, p]`` (pointwise: straight from NCHW x, 8 pixels per vector; im2col:
from a zero-point padded copy of x, stride 2 via 16-byte loads and an even-byte shuffle).
The register tile is ``mo`` output channels × ``np_`` vectors of 8 pixels; its inner
loop, per pair of k, is ``vpbroadcastd`` w-pair, then per vector ``vpmaddwd`` + ``vpaddd``.
Partial sums go through a scratch buffer when there are several reduction blocks; the
last block requantizes and stores.

Note: TVMScript parses a function from its source file when it is built; editing this
file while a build is running makes that build fail."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..intrinsics.x86_avx2 import PMADDWD
from .contract import ceil_div
from .x86_epilogue import requant_row
from .geometry import ConvGeometry
from .padded_copy import plane_copy_macro
from .requant import RequantColumn as Col, RequantRows
from .tiling import BlockedTasks, GemmPlan, PixelChunks, blocked_task_macro, chunk_dispatch

VECTOR = 8  # int32 lanes of an AVX2 vector: output pixels per vector


@dataclass(frozen=True)
class GemmLayout:
    """The sizes of one x86 GEMM-conv kernel, derived from its geometry and plan."""

    geom: ConvGeometry
    plan: GemmPlan

    @property
    def pairs(self) -> int:
        """int16 pairs of the reduction (⌈K/2⌉)."""
        return ceil_div(self.geom.reduction, 2)

    @property
    def row_blocks(self) -> int:
        """Register tiles of ``mo`` output channels per group."""
        return ceil_div(self.geom.out_per_group, self.plan.mo)

    @property
    def rows_per_group(self) -> int:
        return self.row_blocks * self.plan.mo

    @property
    def chunks(self) -> PixelChunks:
        return PixelChunks(self.geom.out_pixels, self.plan.pb, self.plan.np_, VECTOR)

    @property
    def reduction_blocks(self) -> int:
        return ceil_div(self.pairs, self.plan.kb)

    @property
    def splits(self) -> int:
        """Output-channel splits of the parallel loop."""
        return max(1, min(self.plan.osplit, self.row_blocks))

    @property
    def blocks_per_split(self) -> int:
        return ceil_div(self.row_blocks, self.splits)

    @property
    def tasks(self) -> int:
        return self.geom.batch * self.geom.groups * self.chunks.count * self.splits

    @property
    def packed_width(self) -> int:
        """Row length of the packed block (im2col writes up to 7 lanes past a chunk)."""
        return self.plan.pb + 8

    @property
    def partial_size(self) -> int:
        """int32 partial sums kept between reduction blocks (1: none needed)."""
        return self.blocks_per_split * self.plan.mo * self.plan.pb if self.reduction_blocks > 1 else 1


def pack_weight_pairs(weights: np.ndarray, groups: int, mo: int) -> np.ndarray:
    """[O, K] int8 → int32 [G, ⌈O/G/mo⌉, ⌈K/2⌉, mo]: each int32 holds the int16 pair
    (w[.., 2k], w[.., 2k+1]) (little endian: low half first), zero past K and past the
    group's channels."""
    o, k = weights.shape
    grouped = weights.reshape(groups, o // groups, k)
    g, og, _ = grouped.shape
    k2 = ceil_div(k, 2)
    ob = ceil_div(og, mo)
    w16 = np.zeros((g, ob * mo, k2 * 2), np.int16)
    w16[:, :og, :k] = grouped
    wp = w16.view(np.int32).reshape(g, ob, mo, k2)
    return np.ascontiguousarray(wp.transpose(0, 1, 3, 2))


def _tile_macro(lay: GemmLayout, rq: RequantRows, out_zp: int, out_dtype: str):
    """The register tile: ``mo`` rows × nv vectors at chunk pixel ``first``, reduction
    block ``kb``; requantizes and stores after the last block."""
    mo, og, rows_per_group = lay.plan.mo, lay.geom.out_per_group, lay.rows_per_group
    n_blocks, block, chunk, pixels = lay.reduction_blocks, lay.plan.kb, lay.plan.pb, lay.geom.out_pixels
    per_split = lay.blocks_per_split

    @T.macro
    def tile(nv, first, ob, kb, k2n, xp, wp, rqb, part, out, nn, gg, osp, p0):
        acc = T.alloc_buffer((mo * nv * 8,), "int32", scope="global")
        for m in T.unroll(mo):
            for v in T.unroll(nv):
                if n_blocks == 1:
                    acc[T.ramp((m * nv + v) * 8, 1, 8)] = T.broadcast(rqb[gg * rows_per_group + ob * mo + m, Col.BIAS], 8)
                else:
                    acc[T.ramp((m * nv + v) * 8, 1, 8)] = T.if_then_else(
                        kb == 0, T.broadcast(rqb[gg * rows_per_group + ob * mo + m, Col.BIAS], 8),
                        part[T.ramp(((ob - osp * per_split) * mo + m) * chunk + first + v * 8, 1, 8)])
        for k2 in range(k2n):
            for m in T.unroll(mo):
                for v in T.unroll(nv):
                    acc[T.ramp((m * nv + v) * 8, 1, 8)] = acc[T.ramp((m * nv + v) * 8, 1, 8)] + PMADDWD(
                        T.reinterpret("int16x16", xp[k2, T.ramp(first + v * 8, 1, 8)]),
                        T.reinterpret("int16x16", T.broadcast(wp[gg, ob, kb * block + k2, m], 8)))
        if n_blocks > 1:
            if kb < n_blocks - 1:
                for m in T.unroll(mo):
                    for v in T.unroll(nv):
                        part[T.ramp(((ob - osp * per_split) * mo + m) * chunk + first + v * 8, 1, 8)] = acc[
                            T.ramp((m * nv + v) * 8, 1, 8)]
        if n_blocks == 1 or kb == n_blocks - 1:
            for m in T.unroll(mo):
                if ob * mo + m < og:
                    pp = T.meta_var(p0 + first)
                    if pp + nv * 8 <= pixels:
                        out[nn, gg * og + ob * mo + m, T.ramp(pp, 1, nv * 8)] = requant_row(
                            acc, m * nv * 8, nv, rqb, gg * rows_per_group + ob * mo + m, rq, out_zp, out_dtype)
                    else:
                        res = T.alloc_buffer((nv * 8,), out_dtype, scope="global")
                        res[T.ramp(0, 1, nv * 8)] = requant_row(acc, m * nv * 8, nv, rqb,
                                                               gg * rows_per_group + ob * mo + m, rq, out_zp, out_dtype)
                        for lane in range(nv * 8):
                            if pp + lane < pixels:
                                out[nn, gg * og + ob * mo + m, pp + lane] = res[lane]
    return tile


def _pack_macro(lay: GemmLayout, x_dtype: str):
    """Pack reduction block ``kb`` of the chunk at pixel ``p0``: packed[k2, p] holds the
    int16 pair (x[2k2], x[2k2 + 1]) of pixel p0 + p (pointwise: from x; im2col: from the
    padded copy)."""
    geom = lay.geom
    c, cg, kw, reduction, pixels = geom.channels, geom.group_channels, geom.kernel_w, geom.reduction, geom.out_pixels
    ho, wo, hp, wp_ = geom.out_height, geom.out_width, geom.padded_height, geom.padded_width
    (sh, sw), (dh, dw), taps = geom.stride, geom.dilation, geom.kernel_h * geom.kernel_w
    block, chunk = lay.plan.kb, lay.plan.pb
    signed_x = x_dtype == "int8"

    def lo16(v):
        return (v & 0xFFFF) if signed_x else v

    def row_load(xb, nn, cc, yy, xx0):
        """8 lanes x[n, c, yy, xx0 + l·sw] of the padded copy, as int32x8."""
        base = ((nn * c + cc) * hp + yy) * wp_ + xx0
        if sw == 1:
            return T.Cast("int32x8", xb[T.ramp(base, 1, 8)])
        if sw == 2:
            return T.Cast("int32x8", tvm.tirx.Shuffle([xb[T.ramp(base, 1, 16)]], [0, 2, 4, 6, 8, 10, 12, 14]))
        return T.Cast("int32x8", xb[T.ramp(base, sw, 8)])

    @T.macro
    def pack_pointwise(x, xp, nn, gg, kb, k2n, p0):
        for k2 in range(k2n):
            ca = T.meta_var(gg * cg + (kb * block + k2) * 2)
            cb = T.meta_var(gg * cg + T.min((kb * block + k2) * 2 + 1, cg - 1))
            for v in range(chunk // 8):
                if p0 + v * 8 + 8 <= pixels:
                    xp[k2, T.ramp(v * 8, 1, 8)] = lo16(T.Cast("int32x8", x[nn, ca, T.ramp(p0 + v * 8, 1, 8)])) | (
                        T.Cast("int32x8", x[nn, cb, T.ramp(p0 + v * 8, 1, 8)]) << T.broadcast(16, 8))
                else:
                    for lane in range(8):
                        if p0 + v * 8 + lane < pixels:
                            xp[k2, v * 8 + lane] = lo16(T.Cast("int32", x[nn, ca, p0 + v * 8 + lane])) | (
                                T.Cast("int32", x[nn, cb, p0 + v * 8 + lane]) << 16)

    @T.macro
    def pack_im2col(xpad, xp, nn, gg, kb, k2n, p0):
        for k2 in range(k2n):
            ka = T.meta_var((kb * block + k2) * 2)
            kbb = T.meta_var(T.min((kb * block + k2) * 2 + 1, reduction - 1))
            for y in range(p0 // wo, T.min((p0 + chunk + wo - 1) // wo, ho)):
                xs = T.meta_var(T.max(p0 - y * wo, 0))
                xe = T.meta_var(T.min(p0 + chunk - y * wo, wo))
                for xv in range((xe - xs + 7) // 8):
                    xx = T.meta_var(xs + xv * 8)
                    xp[k2, T.ramp(y * wo + xx - p0, 1, 8)] = lo16(row_load(
                        xpad, nn, gg * cg + ka // taps, y * sh + ka % taps // kw * dh, xx * sw + ka % kw * dw)) | (
                        row_load(xpad, nn, gg * cg + kbb // taps, y * sh + kbb % taps // kw * dh,
                                 xx * sw + kbb % kw * dw) << T.broadcast(16, 8))

    return pack_pointwise if geom.is_pointwise else pack_im2col


def gemm_conv_kernel(geom: ConvGeometry, x_dtype: str, x_zp: int, rq: RequantRows, out_zp: int, out_dtype: str,
                     plan: GemmPlan, name: str):
    """The PrimFunc ``conv(x, weight_pairs, requant_rows, out)`` and its info (see the
    module docstring); ``plan`` complete (``choose_plan``)."""
    lay = GemmLayout(geom, plan)
    n, c, h, wd, o, g = geom.batch, geom.channels, geom.height, geom.width, geom.out_channels, geom.groups
    ho, wo, pixels = geom.out_height, geom.out_width, geom.out_pixels
    mo, pairs, block_rows, n_blocks = plan.mo, lay.pairs, plan.kb, lay.reduction_blocks
    row_blocks, rows, per_split = lay.row_blocks, g * lay.rows_per_group, lay.blocks_per_split
    packed_width, partial = lay.packed_width, lay.partial_size
    slack = 16 * max(geom.stride[1], 1) + 64
    plane = n * c * geom.padded_height * geom.padded_width + slack
    pointwise = geom.is_pointwise
    copy = plane_copy_macro(geom, tvm.tirx.const(x_zp, x_dtype))
    pack = _pack_macro(lay, x_dtype)
    run_tiles = chunk_dispatch(lay.chunks, _tile_macro(lay, rq, out_zp, out_dtype))

    @T.macro
    def block(xp, part, osp, nn, gg, ch, p0, kb, k2n, source, wp, rqb, out):
        pack(source, xp, nn, gg, kb, k2n, p0)
        for obl in range(per_split):
            if osp * per_split + obl < row_blocks:
                run_tiles(ch, osp * per_split + obl, kb, k2n, xp, wp, rqb, part, out, nn, gg, osp, p0)

    run_task = blocked_task_macro(BlockedTasks(n, g, lay.chunks, block_rows, pairs, packed_width, partial), block)

    @T.prim_func
    def conv(x4: T.Buffer((n, c, h, wd), x_dtype), wp: T.Buffer((g, row_blocks, pairs, mo), "int32"),
             rqb: T.Buffer((rows, 8), "int32"), out4: T.Buffer((n, o, ho, wo), out_dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((n, c, h * wd), x_dtype, data=x4.data)
        xf = T.decl_buffer((n * c * h * wd,), x_dtype, data=x4.data)
        out = T.decl_buffer((n, o, pixels), out_dtype, data=out4.data)
        if not pointwise:
            # zero-point padded copy of x (flat, with slack for the 16-byte stride-2 loads)
            xpad = T.alloc_buffer((plane,), x_dtype, scope="local")
            for nc_ in T.parallel(n * c):
                copy(xpad, nc_, xf, nc_ * (h * wd))
            for sl in range(slack):
                xpad[n * c * geom.padded_height * geom.padded_width + sl] = T.Cast(x_dtype, x_zp)
        for task in T.parallel(lay.tasks):
            if pointwise:
                run_task(task, x, wp, rqb, out)
            else:
                run_task(task, xpad, wp, rqb, out)

    info = dict(kind="pointwise" if pointwise else "im2col", mo=mo, np=plan.np_, pb=plan.pb, kb=block_rows, nkb=n_blocks,
                osplit=lay.splits, epilogue=rq.mode, fold_zp=rq.fold_zp, tasks=lay.tasks)
    return conv, info
