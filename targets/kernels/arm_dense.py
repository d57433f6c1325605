"""Linear (dense) + requantize on aarch64 (indexed ``sdot``): the "dense" kernel of
``kernels/arm.py``.

out[m, o] = requantize(Σ_k x[m, k]·w[o, k] + bias'[o]) with output channels in the lanes;
weights packed [o-tile][k/4][4·vo outputs][4] (16 bytes = 4 outputs × 4 k), activations
broadcast a quad at a time by the indexed ``sdot`` from one 16-byte load.

Note: TVMScript parses a function from its source file when it is built; editing this
file while a build is running makes that build fail."""
from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from ..intrinsics.arm_neon import SDOT, as_bytes, quad_lane, signed_bytes
from .arm_epilogue import requant_vectors
from .contract import ceil_div, dtype_range, scratch_scope
from .requant import RequantColumn as Col, RequantRows, transposed_columns


def pack_dense_weights(weights: np.ndarray, vo: int) -> np.ndarray:
    """[O, K] int8 → int32 [⌈O/4vo⌉, 4⌈K/16⌉, 4·vo]: per quad of k, 4·vo outputs, each
    int32 the 4 bytes (zero past O and K)."""
    o, k = weights.shape
    kq, tiles = ceil_div(ceil_div(k, 4), 4), ceil_div(o, 4 * vo)
    wb = np.zeros((tiles * vo * 4, kq * 16), np.int8)
    wb[:o, :k] = weights
    return np.ascontiguousarray(wb.reshape(tiles, vo * 4, kq * 4, 4).transpose(0, 2, 1, 3)).view(np.int32)[..., 0]


def dense_columns(rq: RequantRows, o: int, vo: int, out_dtype: str) -> np.ndarray:
    """The requantize rows transposed: int32 [8, O padded to 4·vo] (channels in lanes)."""
    dmin, dmax = dtype_range(out_dtype)
    return transposed_columns(rq, o, 4 * vo, {Col.HI: dmax, Col.LO: dmin})


def dense_kernel(x_shape: tuple, x_dtype: str, o: int, rq: RequantRows, out_zp: int, out_dtype: str, name: str,
                 vo: int = 4, mr: int = 0):
    """The PrimFunc ``dense(x, packed_weights, requant_columns, out)`` for x [..., K] →
    out [..., O] and its info."""
    k = x_shape[-1]
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    steps = ceil_div(ceil_div(k, 4), 4)  # 16 reduction indices a step
    padded_k, tiles = steps * 16, ceil_div(o, 4 * vo)
    rows_per_task = mr or min(m, 4)
    row_blocks = ceil_div(m, rows_per_task)
    packed_rows = row_blocks * rows_per_task
    out_shape = tuple(x_shape[:-1]) + (o,)

    def requantized(acc, rqt, o0):
        return requant_vectors([acc], rqt[Col.MULTIPLIER, T.ramp(o0, 1, 4)], rqt[Col.SHIFT, T.ramp(o0, 1, 4)],
                               T.Cast(f"{out_dtype}x4", rqt[Col.LO, T.ramp(o0, 1, 4)]),
                               T.Cast(f"{out_dtype}x4", rqt[Col.HI, T.ramp(o0, 1, 4)]), rq, out_zp, out_dtype)

    @T.prim_func
    def dense(xnd: T.Buffer(x_shape, x_dtype), wq: T.Buffer((tiles, steps * 4, vo * 4), "int32"),
              rqt: T.Buffer((8, tiles * 4 * vo), "int32"), outnd: T.Buffer(out_shape, out_dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((m, k), x_dtype, data=xnd.data)
        out = T.decl_buffer((m, o), out_dtype, data=outnd.data)
        xp = T.alloc_buffer((packed_rows, padded_k), "int8", scope=scratch_scope(packed_rows * padded_k))
        xp32 = T.decl_buffer((packed_rows, padded_k // 4), "int32", data=xp.data)
        for r in range(packed_rows):
            for kk in range(padded_k):
                xp[r, kk] = T.if_then_else(r < m and kk < k, signed_bytes(x[T.min(r, m - 1), T.min(kk, k - 1)], x_dtype),
                                           T.int8(0))
        for task in range(tiles * row_blocks):
            ot = T.meta_var(task // row_blocks)
            mb = T.meta_var(task % row_blocks)
            acc = T.alloc_buffer((rows_per_task * vo * 4,), "int32", scope="global")
            for r in T.unroll(rows_per_task):
                for v in T.unroll(vo):
                    acc[T.ramp((r * vo + v) * 4, 1, 4)] = rqt[Col.BIAS, T.ramp((ot * vo + v) * 4, 1, 4)]
            for kq in range(steps):
                for i in T.unroll(4):
                    for r in T.unroll(rows_per_task):
                        for v in T.unroll(vo):
                            acc[T.ramp((r * vo + v) * 4, 1, 4)] = SDOT(
                                acc[T.ramp((r * vo + v) * 4, 1, 4)], as_bytes(wq[ot, kq * 4 + i, T.ramp(v * 4, 1, 4)]),
                                quad_lane(xp32[mb * rows_per_task + r, T.ramp(kq * 4, 1, 4)], i))
            for r in T.unroll(rows_per_task):
                if mb * rows_per_task + r < m:
                    for v in T.unroll(vo):
                        o0 = T.meta_var((ot * vo + v) * 4)
                        res = T.meta_var(requantized(acc[T.ramp((r * vo + v) * 4, 1, 4)], rqt, o0))
                        if o0 + 4 <= o:
                            out[mb * rows_per_task + r, T.ramp(o0, 1, 4)] = res
                        else:
                            if o0 < o:
                                tmp = T.alloc_buffer((4,), out_dtype, scope="global")
                                tmp[T.ramp(0, 1, 4)] = res
                                for lane in range(4):
                                    if o0 + lane < o:
                                        out[mb * rows_per_task + r, o0 + lane] = tmp[lane]

    info = dict(kind="dense", vo=vo, mr=rows_per_task, epilogue=rq.mode, clamp=rq.clamp, macs=m * o * k)
    return dense, info
