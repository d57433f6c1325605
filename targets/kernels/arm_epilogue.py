"""The requantize epilogue of the aarch64 int8 kernels: how their rows are encoded
(``encode_requant_rows``, in the one ``RequantColumn`` layout) and the TIR that applies them.

Epilogue: clamp(z + ((acc·m + 2^(S−1)) >> S), lo, hi), four lanes at a time:
- S ≥ 32 ("fast"): h = ``sqdmulh``(acc, m) = ⌊acc·m / 2^31⌋ (it saturates only for
  acc = m = −2^31, and m ≥ 0), then ``srshl`` by −(S − 31); nested floors compose to the
  int64 formula.
- any S ("int64"): ``smull``/``smull2`` to int64 lanes, ``srshl`` by −S, saturating narrow.
Then saturating narrows to int16 (``sqxtn``), the output zero point added with int16
saturation (``sqadd``), a saturating narrow to the output dtype and the clamp to [lo, hi]
on the 8-bit lanes: every bound saturation can hit lies outside [lo, hi].
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tvm

from ..intrinsics.arm_neon import NARROW_BYTES, SMULL, SQADD_16, SQDMULH, SQXTN_32, SQXTN_64, SRSHL_32, SRSHL_64
from .contract import dtype_range
from .requant import RequantColumn as Col, RequantParams, RequantRows
from .tir_vectors import concat_vectors

FAST_MIN_SHIFT = 32  # sqdmulh + srshl needs S ≥ 32


# ----------------------------------------------------------------- requantize rows


def encode_requant_rows(params: RequantParams, rows: Optional[np.ndarray] = None) -> RequantRows:
    """The rows this epilogue reads (``RequantColumn`` layout): SHIFT = −(S − 31) ("fast":
    sqdmulh, then a rounding shift) or −S ("int64"), ROUNDING = 0 (srshl rounds). Constant
    channels: m = 0, lo = hi = the constant (the clamp gives it)."""
    live = params.live
    mode = "fast" if np.all(params.shift[live] >= FAST_MIN_SHIFT) else "int64"
    dmin, dmax = dtype_range(params.out_dtype)
    layout = params.layout(rows)
    table = np.zeros((len(layout), 8), np.int64)
    table[:, Col.HI] = dmax
    table[:, Col.LO] = dmin
    for i, o in enumerate(layout):
        if o < 0:
            continue
        table[i, Col.LO], table[i, Col.HI] = params.lo[o], params.hi[o]
        if params.constant[o]:
            continue  # m = 0: the clamp to lo = hi gives the constant
        table[i, Col.BIAS], table[i, Col.MULTIPLIER] = params.bias[o], params.multiplier[o]
        table[i, Col.SHIFT] = -(params.shift[o] - 31) if mode == "fast" else -params.shift[o]
    clamp = bool(params.constant.any()) or not (np.all(params.lo == dmin) and np.all(params.hi == dmax))
    return RequantRows(table.astype(np.int32), mode, False, clamp)


# ----------------------------------------------------------------- epilogue code


def _half(v, hi: bool):
    return tvm.tirx.Shuffle([v], [2, 3] if hi else [0, 1])


def _scaled(acc, m, nsh, mode: str):
    """The int32x4 rounding-shifted product of ``acc`` by the multipliers ``m`` (int32x4)
    with shifts ``nsh`` (= the SHIFT column, int32x4), saturated to int32."""
    if mode == "fast":
        return SRSHL_32(SQDMULH(acc, m), nsh)
    halves = []
    for hi in (False, True):
        p = SMULL(_half(acc, hi), _half(m, hi))
        halves.append(SQXTN_64(SRSHL_64(p, tvm.tirx.Cast("int64x2", _half(nsh, hi)))))
    return concat_vectors(halves)


def requant_vectors(accs: list, m, nsh, lo, hi, rq: RequantRows, out_zp: int, out_dtype: str):
    """The ``out_dtype`` vector (4·len(accs) lanes) of requantized int32x4 accumulators;
    ``m`` and ``nsh`` are int32x4 (a broadcast scalar or 4 channels' values), ``lo``/``hi``
    the clamp bounds as ``out_dtype`` vectors of the result's lanes."""
    vals = [_scaled(a, m, nsh, rq.mode) for a in accs]
    n = len(vals)
    while len(vals) % 2:
        vals.append(vals[-1])
    zp16 = tvm.tirx.Broadcast(tvm.tirx.const(out_zp, "int16"), 8)
    bytes8 = []
    for i in range(0, len(vals), 2):
        w16 = concat_vectors([SQXTN_32(vals[i]), SQXTN_32(vals[i + 1])])
        if out_zp:
            w16 = SQADD_16(w16, zp16)
        bytes8.append(NARROW_BYTES[out_dtype](w16))
    v = concat_vectors(bytes8)
    if v.ty.dtype.lanes != 4 * n:
        v = tvm.tirx.Shuffle([v], list(range(4 * n)))
    if rq.clamp:
        v = tvm.tirx.max(tvm.tirx.min(v, hi), lo)
    return v
