"""conv2d + requantize as a GEMM on aarch64 (``sdot``, or i8mm's ``smmla``): the
"pointwise" (1×1, stride 1, no padding) and "im2col" kernels of ``kernels/arm.py``.

out[o, p] = Σ_k w[o, k]·x[k, p]. Per (batch, group, chunk of output pixels), the chunk's
activations are packed once as quads (sdot; octets for smmla) of consecutive reduction
indices, xq[k/4, p] (4 bytes per pixel: 4 rows interleaved by one ``st4``; im2col reads a
zero-point padded int8 copy of x, stride 2 through ``ld2``), and reused by every output
channel. The register tile is ``mo`` output channels × ``nv`` vectors of 4 pixels (4 × 4
by default: 16 accumulators); per 4 quads of k it loads one 16-byte weight vector per
output channel and 4·nv pixel vectors, and issues 4·mo·nv indexed ``sdot``s.

Note: TVMScript parses a function from its source file when it is built; editing this
file while a build is running makes that build fail."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..intrinsics.arm_neon import SDOT, SMMLA, as_bytes, interleave, quad_lane, signed_bytes
from .arm_epilogue import requant_vectors
from .contract import ceil_div, scratch_scope
from .geometry import ConvGeometry
from .padded_copy import plane_copy_macro
from .requant import RequantColumn as Col, RequantRows
from .tiling import PixelChunks, chunk_dispatch
from .vector_store import vector_store_macro

PACK_BYTES = 32768  # packed activations of one GEMM chunk: about half of a Cortex-A76's L1D
VECTOR = 4  # int32 lanes: output pixels per vector


@dataclass(frozen=True)
class ArmGemmLayout:
    """The sizes of one arm GEMM-conv kernel (``mo`` × ``nv`` tiles; ``mm``: smmla)."""

    geom: ConvGeometry
    mo: int
    nv: int
    mm: bool

    @property
    def quad_bytes(self) -> int:
        """Reduction indices per packed pixel group: smmla takes 8, sdot 4."""
        return 8 if self.mm else 4

    @property
    def packed_rows(self) -> int:
        return ceil_div(self.geom.reduction, self.quad_bytes)

    @property
    def steps(self) -> int:
        """Steps of the register tile: one k-octet (smmla), four k-quads (sdot)."""
        return self.packed_rows if self.mm else ceil_div(self.packed_rows, 4)

    @property
    def padded_rows(self) -> int:
        return self.packed_rows if self.mm else self.steps * 4

    @property
    def row_blocks(self) -> int:
        return ceil_div(self.geom.out_per_group, self.mo)

    @property
    def chunks(self) -> PixelChunks:
        width = 4 * self.nv
        chunk = max(width, (PACK_BYTES // (self.quad_bytes * self.padded_rows)) // width * width)
        return PixelChunks(self.geom.out_pixels, min(chunk, ceil_div(self.geom.out_pixels, width) * width), self.nv,
                           VECTOR)

    @property
    def packed_width(self) -> int:
        """Pixels of a packed row (im2col writes up to 15 pixels past a chunk)."""
        return self.chunks.chunk + 16


def pack_gemm_weights(weights: np.ndarray, groups: int, mo: int, mm: bool = False) -> np.ndarray:
    """[O, K] int8 → int32 [G, OB, KQ, mo, 4]: per output channel, 16-byte vectors of 4
    quads of consecutive reduction indices (zero past K and past the group's channels).
    ``mm`` (smmla): int32 [G, OB, ⌈K/8⌉, mo/2, 4]: per pair of output channels and
    k-octet, 16 bytes = the pair's two rows of 8 (smmla's 2×8 operand)."""
    o, k = weights.shape
    og = o // groups
    ob = ceil_div(og, mo)
    if mm:
        k8 = ceil_div(k, 8)
        wb = np.zeros((groups, ob * mo, k8 * 8), np.int8)
        wb[:, :og, :k] = weights.reshape(groups, og, k)
        wb = wb.reshape(groups, ob, mo // 2, 2, k8, 8).transpose(0, 1, 4, 2, 3, 5)
        return np.ascontiguousarray(wb).reshape(groups, ob, k8, mo // 2, 16).view(np.int32)
    kq = ceil_div(ceil_div(k, 4), 4)
    wb = np.zeros((groups, ob * mo, kq * 16), np.int8)
    wb[:, :og, :k] = weights.reshape(groups, og, k)
    wb = wb.reshape(groups, ob, mo, kq, 16).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(wb).view(np.int32)


def _store_macro(lay: ArmGemmLayout, rq: RequantRows, out_zp: int, out_dtype: str):
    """Requantize the nv int32x4 accumulator ``vectors`` of output channel ``ch``
    (requantize row ``row``) and store them at pixels [pp, pp + 4·nv), those below P."""
    store = vector_store_macro(lay.geom.out_pixels, out_dtype, guarded=False)

    @T.macro
    def requant_store(nv, vectors, row, ch, pp, rqb, out, nn):
        res = T.meta_var(requant_vectors(
            vectors, T.broadcast(rqb[row, Col.MULTIPLIER], 4), T.broadcast(rqb[row, Col.SHIFT], 4),
            T.broadcast(T.Cast(out_dtype, rqb[row, Col.LO]), nv * 4),
            T.broadcast(T.Cast(out_dtype, rqb[row, Col.HI]), nv * 4), rq, out_zp, out_dtype))
        store(out, (nn, ch), pp, nv * 4, res)
    return requant_store


def _tile_dot_macro(lay: ArmGemmLayout, requant_store):
    """The sdot register tile: mo channels × nv vectors of 4 pixels at chunk pixel ``first``."""
    mo, og, rows_per_group, steps = lay.mo, lay.geom.out_per_group, lay.row_blocks * lay.mo, lay.steps

    @T.macro
    def tile_dot(nv, first, ob, xq, xq8, wp, rqb, out, nn, gg, p0):
        acc = T.alloc_buffer((mo * nv * 4,), "int32", scope="global")
        for m in T.unroll(mo):
            for v in T.unroll(nv):
                acc[T.ramp((m * nv + v) * 4, 1, 4)] = T.broadcast(rqb[gg * rows_per_group + ob * mo + m, Col.BIAS], 4)
        for kq in range(steps):
            for i in T.unroll(4):
                for m in T.unroll(mo):
                    for v in T.unroll(nv):
                        acc[T.ramp((m * nv + v) * 4, 1, 4)] = SDOT(
                            acc[T.ramp((m * nv + v) * 4, 1, 4)], as_bytes(xq[kq * 4 + i, T.ramp(first + v * 4, 1, 4)]),
                            quad_lane(wp[gg, ob, kq, m, T.ramp(0, 1, 4)], i))
        for m in T.unroll(mo):
            if ob * mo + m < og:
                requant_store(nv, [acc[T.ramp((m * nv + v) * 4, 1, 4)] for v in range(nv)],
                              gg * rows_per_group + ob * mo + m, gg * og + ob * mo + m, p0 + first, rqb, out, nn)
    return tile_dot


def _tile_mm_macro(lay: ArmGemmLayout, requant_store):
    """The smmla register tile: acc[m2, q] holds channels 2·m2, 2·m2 + 1 × pixels 2q,
    2q + 1, as smmla's 2×2 [o0p0 o0p1 o1p0 o1p1]."""
    mo, og, rows_per_group, steps = lay.mo, lay.geom.out_per_group, lay.row_blocks * lay.mo, lay.steps
    packed_width = lay.packed_width

    @T.macro
    def store_rows_mm(nv, first, ob, acc, m2, hf, rqb, out, nn, gg, p0):
        # channel 2·m2 + hf: lanes (2hf, 2hf + 1) of each pixel pair's 2×2 accumulator, plus its bias
        if ob * mo + m2 * 2 + hf < og:
            requant_store(nv, [tvm.tirx.Shuffle([acc[T.ramp((m2 * 2 * nv + 2 * v) * 4, 1, 4)],
                                                 acc[T.ramp((m2 * 2 * nv + 2 * v + 1) * 4, 1, 4)]],
                                                [2 * hf, 2 * hf + 1, 4 + 2 * hf, 5 + 2 * hf])
                               + T.broadcast(rqb[gg * rows_per_group + ob * mo + m2 * 2 + hf, Col.BIAS], 4)
                               for v in range(nv)],
                          gg * rows_per_group + ob * mo + m2 * 2 + hf, gg * og + ob * mo + m2 * 2 + hf, p0 + first,
                          rqb, out, nn)

    @T.macro
    def tile_mm(nv, first, ob, xq, xq8, wp, rqb, out, nn, gg, p0):
        acc = T.alloc_buffer((mo * nv * 4,), "int32", scope="global")
        for a in T.unroll(mo * nv):
            acc[T.ramp(a * 4, 1, 4)] = T.broadcast(T.int32(0), 4)
        for kq in range(steps):
            for m2 in T.unroll(mo // 2):
                for q in T.unroll(2 * nv):
                    acc[T.ramp((m2 * 2 * nv + q) * 4, 1, 4)] = SMMLA(
                        acc[T.ramp((m2 * 2 * nv + q) * 4, 1, 4)], as_bytes(wp[gg, ob, kq, m2, T.ramp(0, 1, 4)]),
                        xq8[T.ramp((kq * packed_width + first + q * 2) * 8, 1, 16)])
        for m2 in T.unroll(mo // 2):
            store_rows_mm(nv, first, ob, acc, m2, 0, rqb, out, nn, gg, p0)
            store_rows_mm(nv, first, ob, acc, m2, 1, rqb, out, nn, gg, p0)
    return tile_mm


def _pack_macros(lay: ArmGemmLayout, x_dtype: str):
    """pack_pointwise / pack_im2col: 64 bytes of xq8 (16 pixels × 4 rows, or half of 16 ×
    8 rows: ``part``) interleaved from the rows of x or of its padded copy."""
    geom, qb, packed_width = lay.geom, lay.quad_bytes, lay.packed_width
    c, cg, kw, reduction, wo = geom.channels, geom.group_channels, geom.kernel_w, geom.reduction, geom.out_width
    hp, wp_, (sh, sw), (dh, dw) = geom.padded_height, geom.padded_width, geom.stride, geom.dilation
    taps = geom.kernel_h * kw
    parts = qb // 4
    # one 64-byte store per 16 pixels for 4 rows (st4), two for 8 rows (LLVM miscompiles
    # a 128-byte shuffle store for aarch64: the library crashes)
    interleaves = [interleave(qb, range(16 // parts * i, 16 // parts * (i + 1))) for i in range(parts)]

    def row16(xb, nn, cc, yy, xx0):
        """16 int8 of the padded copy: x[n, c, yy, xx0 + l·sw], l = 0..15."""
        base = ((nn * c + cc) * hp + yy) * wp_ + xx0
        if sw == 1:
            return xb[T.ramp(base, 1, 16)]
        if sw == 2:
            return tvm.tirx.Shuffle([xb[T.ramp(base, 1, 32)]], list(range(0, 32, 2)))
        return xb[T.ramp(base, sw, 16)]

    @T.macro
    def pack_pointwise(x, xq8, nn, gg, k4, p0, v, part):
        xq8[T.ramp((k4 * packed_width + v * 16) * qb + part * 64, 1, 64)] = tvm.tirx.Shuffle(
            [signed_bytes(x[nn, gg * cg + T.min(k4 * qb + r, cg - 1), T.ramp(p0 + v * 16, 1, 16)], x_dtype)
             for r in range(qb)], interleaves[part])

    @T.macro
    def pack_im2col(xpad, xq8, nn, gg, k4, p0, y, xx, part):
        xq8[T.ramp((k4 * packed_width + y * wo + xx - p0) * qb + part * 64, 1, 64)] = tvm.tirx.Shuffle(
            [row16(xpad, nn, gg * cg + T.min(k4 * qb + r, reduction - 1) // taps,
                   y * sh + T.min(k4 * qb + r, reduction - 1) % taps // kw * dh,
                   xx * sw + T.min(k4 * qb + r, reduction - 1) % kw * dw) for r in range(qb)], interleaves[part])
    return pack_pointwise, pack_im2col


def _pack_chunk_macro(lay: ArmGemmLayout, x_dtype: str):
    """Pack the chunk at pixel p0: xq[k4, p] = x[QB·k4 .. QB·k4 + QB − 1, p] (rows past K
    repeat the last: zero weights)."""
    geom, qb, packed_width, chunk = lay.geom, lay.quad_bytes, lay.packed_width, lay.chunks.chunk
    cg, ho, wo, pixels, rows = geom.group_channels, geom.out_height, geom.out_width, geom.out_pixels, lay.packed_rows
    pointwise, two_parts = geom.is_pointwise, lay.quad_bytes == 8
    pack_pointwise, pack_im2col = _pack_macros(lay, x_dtype)

    @T.macro
    def pack_chunk(x, xpad, xq8, nn, gg, p0):
        if pointwise:
            for k4 in range(rows):
                for v in range((chunk + 15) // 16):
                    if p0 + v * 16 + 16 <= pixels:
                        pack_pointwise(x, xq8, nn, gg, k4, p0, v, 0)
                        if two_parts:
                            pack_pointwise(x, xq8, nn, gg, k4, p0, v, 1)
                    else:
                        for lane in range(16):
                            if p0 + v * 16 + lane < pixels:
                                for r in T.unroll(qb):
                                    xq8[(k4 * packed_width + v * 16 + lane) * qb + r] = signed_bytes(
                                        x[nn, gg * cg + T.min(k4 * qb + r, cg - 1), p0 + v * 16 + lane], x_dtype)
        else:
            for k4 in range(rows):
                for y in range(p0 // wo, T.min((p0 + chunk + wo - 1) // wo, ho)):
                    xs = T.meta_var(T.max(p0 - y * wo, 0))
                    xe = T.meta_var(T.min(p0 + chunk - y * wo, wo))
                    for xv in range((xe - xs + 15) // 16):
                        xx = T.meta_var(xs + xv * 16)
                        pack_im2col(xpad, xq8, nn, gg, k4, p0, y, xx, 0)
                        if two_parts:
                            pack_im2col(xpad, xq8, nn, gg, k4, p0, y, xx, 1)
    return pack_chunk


def gemm_conv_kernel(geom: ConvGeometry, x_dtype: str, zp8: int, rq: RequantRows, out_zp: int, out_dtype: str,
                     name: str, mo: int = 4, nv: int = 4, mm: bool = False):
    """The PrimFunc ``conv(x, packed_weights, requant_rows, out)`` and its info; ``zp8``:
    the zero point of the int8 activations (``activation_zero_point``)."""
    lay = ArmGemmLayout(geom, mo, nv, mm)
    n, c, h, wd, o, g = geom.batch, geom.channels, geom.height, geom.width, geom.out_channels, geom.groups
    ho, wo, pixels, qb = geom.out_height, geom.out_width, geom.out_pixels, lay.quad_bytes
    row_blocks, rows, padded_rows, packed_width = lay.row_blocks, g * lay.row_blocks * mo, lay.padded_rows, lay.packed_width
    chunks, pointwise = lay.chunks, geom.is_pointwise
    slack = 32 * max(geom.stride[1], 1) + 64
    plane = n * c * geom.padded_height * geom.padded_width + slack
    weight_vectors = mo // 2 if mm else mo  # 16-byte weight vectors per tile step
    # smmla's packed chunk is allocated as bytes (allocated as int32 and only read as bytes,
    # it got a stack slot too small for it from LLVM: the library crashed)
    xq_shape, xq_dtype = ((padded_rows * packed_width * qb,), "int8") if mm else ((padded_rows, packed_width), "int32")
    requant_store = _store_macro(lay, rq, out_zp, out_dtype)
    run_tiles = chunk_dispatch(chunks, _tile_mm_macro(lay, requant_store) if mm else _tile_dot_macro(lay, requant_store))
    copy = plane_copy_macro(geom, T.int8(zp8), lambda v: signed_bytes(v, x_dtype))
    pack_chunk = _pack_chunk_macro(lay, x_dtype)
    n_chunks = chunks.count

    @T.prim_func
    def conv(x4: T.Buffer((n, c, h, wd), x_dtype), wp: T.Buffer((g, row_blocks, lay.steps, weight_vectors, 4), "int32"),
             rqb: T.Buffer((rows, 8), "int32"), out4: T.Buffer((n, o, ho, wo), out_dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((n, c, h * wd), x_dtype, data=x4.data)
        xf = T.decl_buffer((n * c * h * wd,), x_dtype, data=x4.data)
        out = T.decl_buffer((n, o, pixels), out_dtype, data=out4.data)
        xpad = T.alloc_buffer((plane if not pointwise else 1,), "int8", scope="local")
        if not pointwise:
            # int8 copy of x padded with the (int8) zero point, and slack for stride-2 loads
            for nc_ in range(n * c):
                copy(xpad, nc_, xf, nc_ * (h * wd))
            for sl in range(slack):
                xpad[n * c * geom.padded_height * geom.padded_width + sl] = T.int8(zp8)
        xqa = T.alloc_buffer(xq_shape, xq_dtype, scope=scratch_scope(padded_rows * packed_width * qb))
        xq = T.decl_buffer((padded_rows, packed_width * qb // 4), "int32", data=xqa.data)
        xq8 = T.decl_buffer((padded_rows * packed_width * qb,), "int8", data=xqa.data)
        for task in range(n * g * n_chunks):
            nn = T.meta_var(task // (g * n_chunks))
            gg = T.meta_var(task // n_chunks % g)
            ch = T.meta_var(task % n_chunks)
            p0 = T.meta_var(ch * chunks.chunk)
            pack_chunk(x, xpad, xq8, nn, gg, p0)
            for ob in range(row_blocks):
                run_tiles(ch, ob, xq, xq8, wp, rqb, out, nn, gg, p0)

    info = dict(kind="pointwise" if pointwise else "im2col", instruction="smmla" if mm else "sdot", mo=mo, nv=nv,
                pb=chunks.chunk, chunks=n_chunks, epilogue=rq.mode, clamp=rq.clamp, macs=n * o * pixels * geom.reduction)
    return conv, info
