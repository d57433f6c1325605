"""Linear (dense) + requantize on x86 AVX2: the "dense" kernel of ``kernels/x86.py``.

out[m, o] = requantize(Σ_k x[m, k]·w[o, k] + bias'[o]) with output channels in the vector
lanes. The weights stay int8 (sign-extended to int16 pairs on load, ``vpmovsxbw``: half
the memory traffic of int16 weights; batch-1 dense layers are bound by it), laid out
[o-tile][k/2][vo·8 outputs][2]. Activation pairs (x[2k'], x[2k'+1]) are broadcast as one
int32. Tiles of ``vo`` vectors of 8 outputs × ``mr`` rows, parallel over output tiles.

Note: TVMScript parses a function from its source file when it is built; editing this
file while a build is running makes that build fail."""
from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from ..intrinsics.x86_avx2 import PMADDWD
from .contract import ceil_div
from .requant import RequantColumn as Col, RequantRows, transposed_columns
from .x86_epilogue import narrow8, requant_lanes

# requantize columns of the padding output channels (never stored)
PADDING_CHANNEL = {Col.MULTIPLIER: 1 << 30, Col.SHIFT: 8, Col.HI: 255}


def pack_dense_weights(weights: np.ndarray, vo: int) -> np.ndarray:
    """[O, K] int8 → int8 [⌈O/8vo⌉, ⌈K/2⌉, 16·vo]: per output tile and pair of k, 8·vo
    outputs × 2 taps (zero past O and K)."""
    o, k = weights.shape
    k2, tiles = ceil_div(k, 2), ceil_div(o, 8 * vo)
    w8 = np.zeros((tiles * vo * 8, k2 * 2), np.int8)
    w8[:o, :k] = weights
    return np.ascontiguousarray(w8.reshape(tiles, vo * 8, k2, 2).transpose(0, 2, 1, 3)).reshape(tiles, k2, vo * 16)


def dense_columns(rq: RequantRows, o: int, vo: int) -> np.ndarray:
    """The requantize rows transposed: int32 [8, O padded to 8·vo] (channels in lanes)."""
    return transposed_columns(rq, o, 8 * vo, PADDING_CHANNEL)


def dense_kernel(x_shape: tuple, x_dtype: str, o: int, rq: RequantRows, out_zp: int, out_dtype: str, name: str,
                 vo: int = 4, mr: int = 0):
    """The PrimFunc ``dense(x, weights, requant_columns, out)`` for x [..., K] → out [..., O]
    and its info."""
    k = x_shape[-1]
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    pairs, tiles = ceil_div(k, 2), ceil_div(o, 8 * vo)
    rows_per_task = mr or min(m, 3)
    row_blocks = ceil_div(m, rows_per_task)
    out_shape = tuple(x_shape[:-1]) + (o,)
    signed_x = x_dtype == "int8"

    def lo16(v):
        return (v & 0xFFFF) if signed_x else v

    def requantized(acc, rqt, o0):
        return narrow8(requant_lanes(acc, lambda col: rqt[col, T.ramp(o0, 1, 8)], rq.mode, out_zp, rq.fold_zp,
                                     rq.clamp), out_dtype)

    @T.prim_func
    def dense(xnd: T.Buffer(x_shape, x_dtype), wq: T.Buffer((tiles, pairs, vo * 16), "int8"),
              rqt: T.Buffer((8, tiles * 8 * vo), "int32"), outnd: T.Buffer(out_shape, out_dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((m, k), x_dtype, data=xnd.data)
        out = T.decl_buffer((m, o), out_dtype, data=outnd.data)
        xp = T.alloc_buffer((row_blocks * rows_per_task, pairs), "int32", scope="local")
        for r in T.parallel(row_blocks * rows_per_task):
            for k2 in range(pairs):
                xp[r, k2] = T.if_then_else(r < m, lo16(T.Cast("int32", x[T.min(r, m - 1), k2 * 2])) | (
                    T.Cast("int32", x[T.min(r, m - 1), T.min(k2 * 2 + 1, k - 1)]) << 16), 0)
        for task in T.parallel(tiles * row_blocks):
            ot = T.meta_var(task // row_blocks)
            mb = T.meta_var(task % row_blocks)
            acc = T.alloc_buffer((rows_per_task * vo * 8,), "int32", scope="global")
            for r in T.unroll(rows_per_task):
                for v in T.unroll(vo):
                    acc[T.ramp((r * vo + v) * 8, 1, 8)] = rqt[Col.BIAS, T.ramp((ot * vo + v) * 8, 1, 8)]
            for k2 in range(pairs):
                for v in T.unroll(vo):
                    for r in T.unroll(rows_per_task):
                        acc[T.ramp((r * vo + v) * 8, 1, 8)] = acc[T.ramp((r * vo + v) * 8, 1, 8)] + PMADDWD(
                            T.Cast("int16x16", wq[ot, k2, T.ramp(v * 16, 1, 16)]),
                            T.reinterpret("int16x16", T.broadcast(xp[mb * rows_per_task + r, k2], 8)))
            for r in T.unroll(rows_per_task):
                if mb * rows_per_task + r < m:
                    for v in T.unroll(vo):
                        o0 = T.meta_var((ot * vo + v) * 8)
                        if o0 + 8 <= o:
                            out[mb * rows_per_task + r, T.ramp(o0, 1, 8)] = requantized(
                                acc[T.ramp((r * vo + v) * 8, 1, 8)], rqt, o0)
                        else:
                            if o0 < o:
                                res = T.alloc_buffer((8,), out_dtype, scope="global")
                                res[T.ramp(0, 1, 8)] = requantized(acc[T.ramp((r * vo + v) * 8, 1, 8)], rqt, o0)
                                for lane in range(8):
                                    if o0 + lane < o:
                                        out[mb * rows_per_task + r, o0 + lane] = res[lane]

    info = dict(kind="dense", vo=vo, mr=rows_per_task, epilogue=rq.mode, fold_zp=rq.fold_zp, clamp=rq.clamp,
                tasks=tiles * row_blocks)
    return dense, info
