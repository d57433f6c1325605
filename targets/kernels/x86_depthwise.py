"""Depthwise conv2d + requantize on x86 AVX2 (``vpmaddwd``): the "depthwise" kernel of
``kernels/x86.py`` (one input channel per output channel, any channel multiplier).

One parallel task per (batch, output channel) plane. The input plane is first widened
into an int16 scratch plane padded with the zero point (every later load is a plain
32-byte load that vpmaddwd takes as its memory operand). Then, with a broadcast int16
weight pair (taps j, j+1 of a kernel row):
- stride 1: 16 int16 from column x0 + j hold, in lane pairs, taps (j, j+1) of the even
  output pixels; from x0 + j + 1, of the odd ones (two accumulators, put back in order
  when narrowing). Layout "rows": vectors of 16 pixels along each output row; "flat": the
  output rows laid on the padded input's row pitch, so that vectors run across rows (less
  waste on small planes; the columns past the output width are computed and dropped);
- stride 2: 16 int16 from column 2·x0 + j hold taps (j, j+1) of 8 consecutive pixels.
Other horizontal strides use a plain int32 loop.

Note: TVMScript parses a function from its source file when it is built; editing this
file while a build is running makes that build fail."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..intrinsics.x86_avx2 import PMADDWD
from .contract import ceil_div, scratch_scope
from .geometry import ConvGeometry
from .padded_copy import plane_copy_macro
from .requant import RequantColumn as Col, RequantRows
from .vector_store import vector_store_macro
from .x86_epilogue import narrow16, requant_i32, requant_row

EVEN_ODD_16 = [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]  # packed [e0-3 o0-3 | e4-7 o4-7] → in order


@dataclass(frozen=True)
class DepthwisePlan:
    """How a plane is walked: ``layout`` "rows" or "flat"; ``vectors`` accumulator vectors
    per step; ``rows`` output rows per step (rows layout); ``plane`` int16 elements of the
    scratch plane; ``flat_groups`` steps of the flat layout."""

    layout: str
    vectors: int
    rows: int
    row_blocks: int
    column_groups: int
    flat_groups: int
    plane: int


def pack_depthwise_weights(weights: np.ndarray, dilation_w: int) -> np.ndarray:
    """[O, 1, kh, kw] int8 → int32 [O, kh, ⌈kw/2⌉]: int16 pairs of taps (j, j+1) of a
    kernel row; with horizontal dilation int32 [O, kh, kw], one tap per int32."""
    o, _, kh, kw = weights.shape
    paired = dilation_w == 1
    nq = ceil_div(kw, 2) if paired else kw
    w16 = np.zeros((o, kh, nq, 2), np.int16)
    if paired:
        w16.reshape(o, kh, nq * 2)[:, :, :kw] = weights[:, 0]
    else:
        w16[:, :, :, 0] = weights[:, 0]
    return np.ascontiguousarray(w16.view(np.int32).reshape(o, kh, nq))


def plan_depthwise(geom: ConvGeometry, layout: str = "", nvec: int = 0, rows: int = 0) -> DepthwisePlan:
    """Choose the layout and step (tuned on EfficientNet-Lite0's layers,
    bench/x86_kernels.py); ``layout``/``nvec``/``rows`` override (tests, benchmarks)."""
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    ho, wo, wp_ = geom.out_height, geom.out_width, geom.padded_width
    kh, kw = geom.kernel_h, geom.kernel_w
    paired = dw == 1
    nq = ceil_div(kw, 2) if paired else kw
    max_woff = 2 * (nq - 1) if paired else (nq - 1) * dw  # furthest weight-pair column offset
    if layout == "flat" and (sh != 1 or sw != 1):
        raise ValueError("the flat depthwise layout needs stride 1")
    if sw == 1:
        rows_cost = ho * ceil_div(wo, 16) * 16
        flat_cost = ceil_div(ho * wp_, 16) * 16 if sh == 1 else 1 << 60
        layout = layout or ("flat" if flat_cost < rows_cost or (wo < 32 and sh == 1) else "rows")
    else:
        layout = "rows"
    if layout == "flat":
        n_flat = ceil_div(ho * wp_, 16)
        vectors = nvec or (2 if n_flat % 2 == 0 or n_flat >= 8 else 1)
        groups = ceil_div(n_flat, vectors)
        reach = groups * vectors * 16 + (kh - 1) * dh * wp_ + max_woff + 1  # elements read from the plane start
        return DepthwisePlan("flat", vectors, 1, 1, 1, groups, max(geom.padded_height * wp_, reach) + 16)
    n_xv = ceil_div(wo, 16 if sw == 1 else 8)  # vectors of output pixels per row
    if sw == 1:
        vectors = nvec or (2 if n_xv == 2 else 1)
        step_rows = rows or (1 if vectors == 2 else 2)
    else:
        vectors = nvec or min(n_xv, 2)
        step_rows = rows or 2
    step_rows = max(1, min(step_rows, ho))
    column_groups = ceil_div(n_xv, vectors)
    step_rows = ceil_div(ho, ceil_div(ho, step_rows))  # same number of blocks, least waste
    row_blocks = ceil_div(ho, step_rows)
    reach = ((row_blocks * step_rows - 1) * sh + (kh - 1) * dh) * wp_ + column_groups * vectors * 16 + max_woff + 1
    return DepthwisePlan("rows", vectors, step_rows, row_blocks, column_groups, 1,
                         max(geom.padded_height * wp_, reach) + 16)


class _Steps:
    """The vector steps of one depthwise kernel (TIR helpers and macros over a plane)."""

    def __init__(self, geom: ConvGeometry, plan: DepthwisePlan, rq: RequantRows, out_zp: int, out_dtype: str):
        self.geom, self.plan, self.rq, self.out_zp, self.out_dtype = geom, plan, rq, out_zp, out_dtype
        self.paired = geom.dilation[1] == 1
        self.pairs_per_row = ceil_div(geom.kernel_w, 2) if self.paired else geom.kernel_w

    def column_offset(self, q):
        """Input column of weight pair q, from the output pixel's first tap."""
        return 2 * q if self.paired else q * self.geom.dilation[1]

    def madd(self, src, base, wv):
        return PMADDWD(src[T.ramp(base, 1, 16)], wv)

    def weight_pair(self, wdw, oo, i, q):
        return T.reinterpret("int16x16", T.broadcast(wdw[oo, i, q], 8))

    def finish_even_odd(self, acc, base, oo, rqb):
        """16 output pixels from even (acc[base:+8]) and odd (acc[base+8:+8]) accumulators."""
        rq = self.rq
        even = requant_i32(acc[T.ramp(base, 1, 8)], 8, rqb, oo, rq.mode, self.out_zp, rq.fold_zp, rq.clamp)
        odd = requant_i32(acc[T.ramp(base + 8, 1, 8)], 8, rqb, oo, rq.mode, self.out_zp, rq.fold_zp, rq.clamp)
        return narrow16(even, odd, self.out_dtype, EVEN_ODD_16)

    def finish_consecutive(self, acc, base, nv, oo, rqb):
        return requant_row(acc, base, nv, rqb, oo, self.rq, self.out_zp, self.out_dtype)


def _plane_copy_macro(geom: ConvGeometry, x_zp: int):
    """The int16 copy of an input plane, padded with the zero point (the slack past it is
    left as is: it only feeds outputs that are dropped); an unpadded plane is copied flat."""
    c, h, wd = geom.channels, geom.height, geom.width
    og = geom.out_channels // c
    unpadded = geom.padding == (0, 0, 0, 0)
    copy_padded = plane_copy_macro(geom, T.int16(x_zp), _widen16)

    @T.macro
    def copy(xf, src, nn, oo):
        if unpadded:
            for v in range(h * wd // 16):
                src[T.ramp(v * 16, 1, 16)] = T.Cast("int16x16", xf[T.ramp((nn * c + oo // og) * (h * wd) + v * 16, 1, 16)])
            for lane in range(h * wd % 16):
                src[h * wd // 16 * 16 + lane] = T.Cast("int16", xf[(nn * c + oo // og) * (h * wd) + h * wd // 16 * 16 + lane])
        else:
            copy_padded(src, 0, xf, (nn * c + oo // og) * (h * wd))
    return copy


def _widen16(v):
    lanes = v.ty.dtype.lanes
    return T.Cast("int16" if lanes == 1 else f"int16x{lanes}", v)


def _flat_macro(steps: _Steps):
    """Stride 1, flat layout: vectors of 16 across rows on the padded pitch."""
    geom, plan, out_dtype = steps.geom, steps.plan, steps.out_dtype
    kh, dh, wp_, ho, wo = geom.kernel_h, geom.dilation[0], geom.padded_width, geom.out_height, geom.out_width
    groups, nvec, npairs = plan.flat_groups, plan.vectors, steps.pairs_per_row

    @T.macro
    def flat(src, wdw, rqb, out, nn, oo):
        res = T.alloc_buffer((groups * nvec * 16,), out_dtype, scope=scratch_scope(groups * nvec * 16))
        for g in range(groups):
            acc = T.alloc_buffer((nvec * 16,), "int32", scope="global")
            for v in T.unroll(nvec):
                acc[T.ramp(v * 16, 1, 16)] = T.broadcast(rqb[oo, Col.BIAS], 16)
            for i in T.unroll(kh):
                for q in T.unroll(npairs):
                    for v in T.unroll(nvec):
                        base = T.meta_var((g * nvec + v) * 16 + i * dh * wp_ + steps.column_offset(q))
                        acc[T.ramp(v * 16, 1, 8)] = acc[T.ramp(v * 16, 1, 8)] + steps.madd(
                            src, base, steps.weight_pair(wdw, oo, i, q))
                        acc[T.ramp(v * 16 + 8, 1, 8)] = acc[T.ramp(v * 16 + 8, 1, 8)] + steps.madd(
                            src, base + 1, steps.weight_pair(wdw, oo, i, q))
            for v in T.unroll(nvec):
                res[T.ramp((g * nvec + v) * 16, 1, 16)] = steps.finish_even_odd(acc, v * 16, oo, rqb)
        for y in range(ho):
            out[nn, oo, y, T.ramp(0, 1, wo)] = res[T.ramp(y * wp_, 1, wo)]
    return flat


def _rows_macro(steps: _Steps):
    """Rows layout, stride 1 (16 pixels a vector, even/odd accumulators) or 2 (8
    consecutive pixels a vector): blocks of ``rows`` output rows × ``vectors`` vectors,
    grouped by input row ii = r·sh + i·dh so that a row's loads are used at once."""
    geom, plan = steps.geom, steps.plan
    (sh, sw), dh = geom.stride, geom.dilation[0]
    kh, wp_ = geom.kernel_h, geom.padded_width
    nvec, step_rows, npairs = plan.vectors, plan.rows, steps.pairs_per_row
    lanes = 16 if sw == 1 else 8  # accumulator lanes per vector
    input_rows = (step_rows - 1) * sh + (kh - 1) * dh + 1
    store = _rows_store_macro(steps)

    @T.macro
    def rows(src, wdw, rqb, out, nn, oo):
        for yb in range(plan.row_blocks):
            for xg in range(plan.column_groups):
                acc = T.alloc_buffer((step_rows * nvec * lanes,), "int32", scope="global")
                for r in T.unroll(step_rows):
                    for v in T.unroll(nvec):
                        acc[T.ramp((r * nvec + v) * lanes, 1, lanes)] = T.broadcast(rqb[oo, Col.BIAS], lanes)
                for ii in T.unroll(input_rows):
                    for r in T.unroll(step_rows):
                        if ii - r * sh >= 0 and ii - r * sh < kh * dh and (ii - r * sh) % dh == 0:
                            for q in T.unroll(npairs):
                                for v in T.unroll(nvec):
                                    base = T.meta_var((yb * step_rows * sh + ii) * wp_ + (xg * nvec + v) * 16
                                                      + steps.column_offset(q))
                                    acc[T.ramp((r * nvec + v) * lanes, 1, 8)] = acc[T.ramp(
                                        (r * nvec + v) * lanes, 1, 8)] + steps.madd(
                                        src, base, steps.weight_pair(wdw, oo, (ii - r * sh) // dh, q))
                                    if lanes == 16:
                                        acc[T.ramp((r * nvec + v) * 16 + 8, 1, 8)] = acc[T.ramp(
                                            (r * nvec + v) * 16 + 8, 1, 8)] + steps.madd(
                                            src, base + 1, steps.weight_pair(wdw, oo, (ii - r * sh) // dh, q))
                store(acc, rqb, out, nn, oo, yb, xg)
    return rows


def _rows_store_macro(steps: _Steps):
    """Requantize and store a block of the rows layout (the last vector of a row may be
    partial)."""
    geom, plan, out_dtype = steps.geom, steps.plan, steps.out_dtype
    ho, wo, stride_w = geom.out_height, geom.out_width, geom.stride[1]
    nvec, step_rows = plan.vectors, plan.rows

    store_even_odd = vector_store_macro(wo, out_dtype)
    store_consecutive = vector_store_macro(wo, out_dtype, guarded=False)

    @T.macro
    def store(acc, rqb, out, nn, oo, yb, xg):
        for r in T.unroll(step_rows):
            if yb * step_rows + r < ho:
                if stride_w == 1:
                    for v in T.unroll(nvec):
                        store_even_odd(out, (nn, oo, yb * step_rows + r), (xg * nvec + v) * 16, 16,
                                       steps.finish_even_odd(acc, (r * nvec + v) * 16, oo, rqb))
                else:
                    store_consecutive(out, (nn, oo, yb * step_rows + r), xg * nvec * 8, nvec * 8,
                                      steps.finish_consecutive(acc, r * nvec * 8, nvec, oo, rqb))
    return store


def _scalar_macro(steps: _Steps, x_zp: int):
    """Any other horizontal stride: one output at a time, in int32."""
    geom, rq, out_zp = steps.geom, steps.rq, steps.out_zp
    h, wd, ho, wo, kh = geom.height, geom.width, geom.out_height, geom.out_width, geom.kernel_h
    (sh, sw), dh, (pt, _, pl, _) = geom.stride, geom.dilation[0], geom.padding
    og, npairs, paired = geom.out_channels // geom.channels, steps.pairs_per_row, steps.paired

    def tap(x, nn, oo, yy, xa):
        return T.if_then_else(tvm.tirx.all(yy >= 0, yy < h, xa >= 0, xa < wd),
                              T.Cast("int32", x[nn, oo // og, T.max(T.min(yy, h - 1), 0), T.max(T.min(xa, wd - 1), 0)]),
                              x_zp)

    @T.macro
    def scalar(x, wdw, rqb, out, nn, oo):
        for y in range(ho):
            for xx in range(wo):
                acc1 = T.alloc_buffer((1,), "int32", scope="global")
                acc1[0] = rqb[oo, Col.BIAS]
                for i in range(kh):
                    for q in range(npairs):
                        wpair = T.meta_var(wdw[oo, i, q])
                        yy = T.meta_var(y * sh + i * dh - pt)
                        xa = T.meta_var(xx * sw + steps.column_offset(q) - pl)
                        acc1[0] = acc1[0] + tap(x, nn, oo, yy, xa) * ((wpair << 16) >> 16)
                        if paired:
                            acc1[0] = acc1[0] + tap(x, nn, oo, yy, xa + 1) * (wpair >> 16)
                out[nn, oo, y, xx] = T.Cast(steps.out_dtype, requant_i32(acc1[0], 1, rqb, oo, rq.mode, out_zp, rq.fold_zp))
    return scalar


def depthwise_kernel(geom: ConvGeometry, x_dtype: str, x_zp: int, rq: RequantRows, out_zp: int, out_dtype: str,
                     name: str, layout: str = "", nvec: int = 0, rows: int = 0):
    """The PrimFunc ``dwconv(x, weight_pairs, requant_rows, out)`` and its info;
    ``layout``/``nvec``/``rows`` override the plan (``plan_depthwise``)."""
    n, c, h, wd, o = geom.batch, geom.channels, geom.height, geom.width, geom.out_channels
    kh, ho, wo, sw = geom.kernel_h, geom.out_height, geom.out_width, geom.stride[1]
    plan = plan_depthwise(geom, layout, nvec, rows)
    steps = _Steps(geom, plan, rq, out_zp, out_dtype)
    npairs = steps.pairs_per_row
    copy = _plane_copy_macro(geom, x_zp)
    compute = _flat_macro(steps) if plan.layout == "flat" else _rows_macro(steps)
    scalar = _scalar_macro(steps, x_zp)

    @T.prim_func
    def dwconv(x: T.Buffer((n, c, h, wd), x_dtype), wdw: T.Buffer((o, kh, npairs), "int32"),
               rqb: T.Buffer((o, 8), "int32"), out: T.Buffer((n, o, ho, wo), out_dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        xf = T.decl_buffer((n * c * h * wd,), x_dtype, data=x.data)
        for task in T.parallel(n * o):
            nn = T.meta_var(task // o)
            oo = T.meta_var(task % o)
            if sw == 1 or sw == 2:
                src = T.alloc_buffer((plan.plane,), "int16", scope=scratch_scope(plan.plane * 2))
                copy(xf, src, nn, oo)
                compute(src, wdw, rqb, out, nn, oo)
            else:
                scalar(x, wdw, rqb, out, nn, oo)

    info = dict(kind="depthwise", layout=plan.layout, nvec=plan.vectors, rows=plan.rows, epilogue=rq.mode,
                fold_zp=rq.fold_zp, clamp=rq.clamp, tasks=n * o)
    return dwconv, info
