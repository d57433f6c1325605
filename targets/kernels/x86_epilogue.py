"""The requantize epilogue of the x86 AVX2 int8 kernels: how their rows are encoded
(``encode_requant_rows``, in the one ``RequantColumn`` layout) and the TIR that applies them.

Epilogue: clamp(z + ((acc·m + 2^(S−1)) >> S), lo, hi). When every live S ≥ 33 ("fast"),
in 32-bit lanes: h = (acc·m) >> 32 by two ``vpmuldq`` (even and odd lanes) and a blend,
then (h + 2^(S−33)) >> (S − 32): adding 2^(S−1) = 2^32·2^(S−33) commutes with the floor
division by 2^32, and floor divisions compose. The output zero point is folded into the
rounding term when no int32 overflow is possible. Otherwise ("int64") in int64 lanes. The
clamp is skipped when [lo, hi] is the output dtype's range: the saturating packs
(vpackssdw, then vpackuswb / vpacksswb) clamp to exactly that.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tvm

from ..intrinsics.x86_avx2 import PACK_BYTES, PACKSSDW_128, PACKSSDW_256, mulhi_lanes, mulhi_scalar
from .contract import INT32_MAX, dtype_range
from .requant import RequantColumn as Col, RequantParams, RequantRows
from .tir_vectors import concat_vectors

FAST_MIN_SHIFT = 33  # the 32-bit epilogue needs S ≥ 33


# ----------------------------------------------------------------- requantize rows


def encode_requant_rows(params: RequantParams, rows: Optional[np.ndarray] = None) -> RequantRows:
    """The rows this epilogue reads (``RequantColumn`` layout): in the "fast" mode SHIFT =
    S − 32 and ROUNDING = 2^(S−33) (+ z·2^(S−32) when the zero point is folded in); in the
    "int64" mode SHIFT = S and ROUNDING is unused. A constant channel's row yields its
    constant without clamping: fast: acc = 0, ROUNDING = c − z (c with the zero point
    folded), SHIFT = 0; int64: acc = BIAS = c − z, m = 1, S = 0."""
    live, s, m, z = params.live, params.shift, params.multiplier, params.out_zp
    mode = "fast" if np.all(s[live] >= FAST_MIN_SHIFT) else "int64"
    fold = False
    if mode == "fast" and z != 0:
        sl = s[live]
        hmax = (params.acc_bound[live] * m[live] >> 32) + 1
        fold = bool(np.all(hmax + (1 << (sl - 33)) + abs(z) * (1 << (sl - 32)) < INT32_MAX))
    layout = params.layout(rows)
    table = np.zeros((len(layout), 8), np.int64)
    table[:, Col.MULTIPLIER] = 1 << 30
    table[:, Col.SHIFT] = 8 if mode == "fast" else 40
    table[:, Col.HI] = 255
    for i, o in enumerate(layout):
        if o >= 0:
            table[i] = _row(params, o, mode, fold)
    dmin, dmax = dtype_range(params.out_dtype)
    clamp = not (np.all(params.lo[live] == dmin) and np.all(params.hi[live] == dmax))
    return RequantRows(table.astype(np.int32), mode, fold, clamp)


def _row(params: RequantParams, o: int, mode: str, fold: bool) -> np.ndarray:
    row = np.zeros(8, np.int64)
    row[Col.LO], row[Col.HI] = params.lo[o], params.hi[o]
    z, s = params.out_zp, int(params.shift[o])
    if params.constant[o]:
        if mode == "fast":
            row[Col.MULTIPLIER], row[Col.ROUNDING] = 1 << 30, params.lo[o] - (0 if fold else z)
        else:
            row[Col.BIAS], row[Col.MULTIPLIER] = params.lo[o] - z, 1
        return row
    row[Col.BIAS], row[Col.MULTIPLIER] = params.bias[o], params.multiplier[o]
    if mode == "fast":
        row[Col.ROUNDING] = (1 << (s - 33)) + (z << (s - 32) if fold else 0)
        row[Col.SHIFT] = s - 32
    else:
        row[Col.SHIFT] = s
    return row


# ----------------------------------------------------------------- epilogue code


def _bcast(v, lanes):
    return tvm.tirx.Broadcast(v, lanes) if lanes > 1 else v


def requant_lanes(acc, column, mode: str, out_zp: int, fold_zp: bool, clamp: bool):
    """Requantize an int32x8 accumulator whose lanes are 8 output channels; ``column(c)``
    is the int32x8 vector of ``RequantColumn`` c for those channels."""
    if mode == "fast":
        h = mulhi_lanes(acc, column(Col.MULTIPLIER))
        r = (h + column(Col.ROUNDING)) >> column(Col.SHIFT)
    else:
        s64 = tvm.tirx.Cast("int64x8", column(Col.SHIFT))
        one = tvm.tirx.Broadcast(tvm.tirx.const(1, "int64"), 8)
        rnd = (one << s64) >> one
        r64 = (tvm.tirx.Cast("int64x8", acc) * tvm.tirx.Cast("int64x8", column(Col.MULTIPLIER)) + rnd) >> s64
        lim = tvm.tirx.Broadcast(tvm.tirx.const(1 << 20, "int64"), 8)
        r = tvm.tirx.Cast("int32x8", tvm.tirx.max(tvm.tirx.min(r64, lim), -lim))
    if out_zp != 0 and not fold_zp:
        r = r + tvm.tirx.Broadcast(tvm.tirx.const(out_zp, "int32"), 8)
    if not clamp:
        return r
    return tvm.tirx.max(tvm.tirx.min(r, column(Col.HI)), column(Col.LO))


def requant_i32(acc, lanes: int, table, row, mode: str, out_zp: int, fold_zp: bool, clamp: bool = True):
    """The requantized, clamped int32 values (``lanes`` lanes: 8 or 1) of an int32
    accumulator expression that already holds the folded bias, with the constants of
    ``table[row]`` (one output channel)."""
    vt = (lambda d: f"{d}x{lanes}") if lanes > 1 else (lambda d: d)
    if mode == "fast":
        if lanes == 8:
            h = mulhi_scalar(acc, table[row, Col.MULTIPLIER])
        else:
            prod = tvm.tirx.Cast(vt("int64"), acc) * _bcast(tvm.tirx.Cast("int64", table[row, Col.MULTIPLIER]), lanes)
            h = tvm.tirx.Cast(vt("int32"), prod >> _bcast(tvm.tirx.const(32, "int64"), lanes))
        r = (h + _bcast(table[row, Col.ROUNDING], lanes)) >> _bcast(table[row, Col.SHIFT], lanes)
    else:
        s64 = tvm.tirx.Cast("int64", table[row, Col.SHIFT])
        rnd = tvm.tirx.shift_right(tvm.tirx.shift_left(tvm.tirx.const(1, "int64"), s64), tvm.tirx.const(1, "int64"))
        prod = tvm.tirx.Cast(vt("int64"), acc) * _bcast(tvm.tirx.Cast("int64", table[row, Col.MULTIPLIER]), lanes) \
            + _bcast(rnd, lanes)
        r64 = prod >> _bcast(s64, lanes)
        r64 = tvm.tirx.max(tvm.tirx.min(r64, _bcast(tvm.tirx.const(1 << 20, "int64"), lanes)),
                           _bcast(tvm.tirx.const(-(1 << 20), "int64"), lanes))
        r = tvm.tirx.Cast(vt("int32"), r64)
    if out_zp != 0 and not fold_zp:
        r = r + _bcast(tvm.tirx.const(out_zp, "int32"), lanes)
    if not clamp:  # [lo, hi] is the output dtype's range: the saturating packs clamp
        return r
    return tvm.tirx.max(tvm.tirx.min(r, _bcast(table[row, Col.HI], lanes)), _bcast(table[row, Col.LO], lanes))


def narrow16(a, b, out_dtype: str, order: Optional[list] = None):
    """Two int32x8 vectors → one ``out_dtype`` x16 vector (a's lanes then b's; or the lanes
    of the packed int16 vector [a0-3 b0-3 | a4-7 b4-7] taken in ``order``), saturating:
    vpackssdw, then vpackuswb / vpacksswb of the two halves."""
    w = PACKSSDW_256(a, b)  # [a0-3 b0-3 | a4-7 b4-7]
    if order is not None:
        w = tvm.tirx.Shuffle([w], order)
        return PACK_BYTES[out_dtype](tvm.tirx.Shuffle([w], list(range(8))), tvm.tirx.Shuffle([w], list(range(8, 16))))
    lo = tvm.tirx.Shuffle([w], [0, 1, 2, 3, 8, 9, 10, 11])  # a0..7
    hi = tvm.tirx.Shuffle([w], [4, 5, 6, 7, 12, 13, 14, 15])  # b0..7
    return PACK_BYTES[out_dtype](lo, hi)


def narrow8(a, out_dtype: str):
    """One int32x8 vector → ``out_dtype`` x8, saturating."""
    w = PACKSSDW_128(tvm.tirx.Shuffle([a], [0, 1, 2, 3]), tvm.tirx.Shuffle([a], [4, 5, 6, 7]))
    v = PACK_BYTES[out_dtype](w, w)
    return tvm.tirx.Shuffle([v], list(range(8)))


def requant_row(acc_buf, base: int, nvec: int, table, row, rq: RequantRows, out_zp: int, out_dtype: str):
    """The ``out_dtype`` x(8·nvec) output of nvec int32x8 accumulator vectors
    acc_buf[base + 8v + l] of one output channel (``table[row]``)."""
    vals = [requant_i32(acc_buf[tvm.tirx.Ramp(base + 8 * v, 1, 8)], 8, table, row, rq.mode, out_zp, rq.fold_zp,
                        rq.clamp) for v in range(nvec)]
    parts = [narrow16(vals[v], vals[v + 1], out_dtype) for v in range(0, nvec - 1, 2)]
    if nvec % 2:
        parts.append(narrow8(vals[-1], out_dtype))
    return concat_vectors(parts)
