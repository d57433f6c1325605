"""Depthwise conv2d + requantize on aarch64 (``tbl`` + indexed ``sdot``): the
"depthwise" kernel of ``kernels/arm.py``.

One plane per output channel, copied as int8 with zero-point padding. Each kernel row's
taps go in groups of 4 (``tbl`` gathers, from a 32-byte window of the input row, the 4
taps of each of 4 output pixels: a sliding window for stride 1, every other byte for
stride 2), and one indexed ``sdot`` multiplies them by that tap group's weights, held in
registers: a 3×3 kernel takes 3 ``tbl`` + 3 ``sdot`` per 4 outputs.

Note: TVMScript parses a function from its source file when it is built; editing this
file while a build is running makes that build fail."""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from ..intrinsics.arm_neon import SDOT, TBL2, quad_lane, signed_bytes
from .arm_epilogue import requant_vectors
from .contract import ExactnessError, ceil_div, scratch_scope
from .geometry import ConvGeometry
from .padded_copy import plane_copy_macro
from .requant import RequantColumn as Col, RequantRows
from .vector_store import vector_store_macro


def depthwise_plan(kw: int, sw: int, dw: int) -> tuple[int, int]:
    """(tap groups per kernel row, output vectors per 32-byte window): the window must hold
    every tap of 4·V outputs: (4V − 1)·sw + (4·NQ − 1)·dw < 32. ExactnessError when no
    window does."""
    nq = ceil_div(kw, 4)
    for v in (4, 3, 2, 1):
        if (4 * v - 1) * sw + (4 * nq - 1) * dw < 32:
            return nq, v
    raise ExactnessError(f"depthwise stride {sw} / dilation {dw} with {kw} taps: no sdot window covers it")


def pack_depthwise_weights(weights: np.ndarray) -> np.ndarray:
    """[O, 1, kh, kw] int8 → int32 [O, NW, 4]: the taps of kernel row i in groups of 4
    (zero past kw), group (i, q) at quad i·NQ + q."""
    o, _, kh, kw = weights.shape
    nq = ceil_div(kw, 4)
    nw = ceil_div(kh * nq, 4)
    wb = np.zeros((o, nw * 4, 4), np.int8)
    for i in range(kh):
        for q in range(nq):
            taps = weights[:, 0, i, 4 * q:4 * q + 4]
            wb[:, i * nq + q, :taps.shape[1]] = taps
    return np.ascontiguousarray(wb.reshape(o, nw * 16)).view(np.int32).reshape(o, nw, 4)


def _taps(sw: int, dw: int):
    """taps(row, base, v, q): the 4 taps of group q for each of the 4 outputs of vector v,
    gathered by ``tbl`` from the 32-byte window at row[base] (v, q: unrolled loops,
    constants once unrolled): window byte (4v + l)·sw + (4q + j)·dw for output l, tap j."""
    def taps(row, base, v, q):
        pos = [(4 * v + lane) * sw + (4 * q + j) * dw for lane in range(4) for j in range(4)]
        index = tvm.tirx.Shuffle([tvm.tirx.Ramp(tvm.tirx.const(0, "int8"), tvm.tirx.const(1, "int8"), 32)], pos)
        return TBL2(row[T.ramp(base, 1, 16)], row[T.ramp(base + 16, 1, 16)], index)
    return taps


def depthwise_kernel(geom: ConvGeometry, x_dtype: str, zp8: int, rq: RequantRows, out_zp: int, out_dtype: str,
                     name: str):
    """The PrimFunc ``dwconv(x, packed_weights, requant_rows, out)`` and its info; ``zp8``:
    the zero point of the int8 activations."""
    n, c, h, wd, o = geom.batch, geom.channels, geom.height, geom.width, geom.out_channels
    kh, kw, ho, wo = geom.kernel_h, geom.kernel_w, geom.out_height, geom.out_width
    og, (sh, sw), (dh, dw), wp_ = o // c, geom.stride, geom.dilation, geom.padded_width
    groups_per_row, vectors = depthwise_plan(kw, sw, dw)
    weight_vectors = ceil_div(kh * groups_per_row, 4)  # 4 tap groups each
    width = 4 * vectors  # output pixels per step
    plane = geom.padded_height * wp_ + 64
    copy = plane_copy_macro(geom, T.int8(zp8), lambda v: signed_bytes(v, x_dtype))
    taps = _taps(sw, dw)
    store = vector_store_macro(wo, out_dtype, guarded=False)

    @T.prim_func
    def dwconv(x: T.Buffer((n, c, h, wd), x_dtype), wv: T.Buffer((o, weight_vectors, 4), "int32"),
               rqb: T.Buffer((o, 8), "int32"), out: T.Buffer((n, o, ho, wo), out_dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        xf = T.decl_buffer((n * c * h * wd,), x_dtype, data=x.data)
        src = T.alloc_buffer((plane,), "int8", scope=scratch_scope(plane))
        for task in range(n * o):
            nn = T.meta_var(task // o)
            oo = T.meta_var(task % o)
            copy(src, 0, xf, (nn * c + oo // og) * (h * wd))
            cst = T.alloc_buffer((8,), "int32", scope="global")  # the plane's requantize row, in registers
            for j in range(8):
                cst[j] = rqb[oo, j]
            m4 = T.meta_var(T.broadcast(cst[Col.MULTIPLIER], 4))
            s4 = T.meta_var(T.broadcast(cst[Col.SHIFT], 4))
            lo = T.meta_var(T.broadcast(T.Cast(out_dtype, cst[Col.LO]), width))
            hi = T.meta_var(T.broadcast(T.Cast(out_dtype, cst[Col.HI]), width))
            for y in range(ho):
                for xb in range(ceil_div(wo, width)):
                    acc = T.alloc_buffer((width,), "int32", scope="global")
                    for v in T.unroll(vectors):
                        acc[T.ramp(v * 4, 1, 4)] = T.broadcast(cst[Col.BIAS], 4)
                    for i in T.unroll(kh):
                        for q in T.unroll(groups_per_row):
                            for v in T.unroll(vectors):
                                acc[T.ramp(v * 4, 1, 4)] = SDOT(
                                    acc[T.ramp(v * 4, 1, 4)], taps(src, (y * sh + i * dh) * wp_ + xb * 4 * vectors * sw, v, q),
                                    quad_lane(wv[oo, (i * groups_per_row + q) // 4, T.ramp(0, 1, 4)],
                                              (i * groups_per_row + q) % 4))
                    store(out, (nn, oo, y), xb * 4 * vectors, width,
                          requant_vectors([acc[T.ramp(v * 4, 1, 4)] for v in range(vectors)], m4, s4, lo, hi, rq,
                                          out_zp, out_dtype))

    info = dict(kind="depthwise", tap_groups=groups_per_row, vectors=vectors, epilogue=rq.mode, clamp=rq.clamp,
                macs=n * o * ho * wo * kh * kw)
    return dwconv, info
