"""Requantize constants: validated once, laid out once.

``requant_params`` checks the fixed-point requantize clamp(z + ((acc·m + 2^(S−1)) >> S),
lo, hi) of ``qcompiler/fixed_point.py`` against what every kernel's epilogue can compute
exactly, for every ISA; an ISA's epilogue (``targets/intrinsics``) then encodes the
checked values into rows of the one layout ``RequantColumn`` names: int32 [rows, 8], one
row per output channel (padded rows are harmless), read by column name, never by number.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Optional

import numpy as np

from .contract import INT32_MAX, INT32_MIN, Channels, ExactnessError, dtype_range, per_channel

ROW_WIDTH = 8  # int32 values per row (32 bytes: one aligned load; columns 6 and 7 are 0)
MAX_SHIFT = 62


class RequantColumn(IntEnum):
    """Columns of a requantize row; what SHIFT and ROUNDING hold is the epilogue's own
    encoding of S (see ``targets/intrinsics/x86_avx2.encode_requant_rows`` and
    ``arm_neon.encode_requant_rows``)."""

    BIAS = 0  # the accumulator's start: bias with the input zero point folded in
    MULTIPLIER = 1  # m in [0, 2^31)
    SHIFT = 2  # the epilogue's shift operand
    ROUNDING = 3  # the epilogue's rounding addend (0 where the instruction rounds)
    LO = 4  # clamp bounds, in the output dtype's range
    HI = 5


@dataclass(frozen=True)
class RequantParams:
    """Per-output-channel requantize values, checked (``requant_params``): int64 [O] each."""

    bias: np.ndarray  # bias with the input zero point folded in
    multiplier: np.ndarray
    shift: np.ndarray  # S
    lo: np.ndarray
    hi: np.ndarray
    constant: np.ndarray  # bool: the channel's output is lo (= hi) whatever the input
    acc_bound: np.ndarray  # bound of |acc| (bias included)
    out_zp: int
    out_dtype: str

    @property
    def live(self) -> np.ndarray:
        return ~self.constant

    def layout(self, rows: Optional[np.ndarray]) -> np.ndarray:
        """Output channel of each row (−1: padding row); default one row per channel."""
        return np.arange(len(self.bias)) if rows is None else rows


@dataclass
class RequantRows:
    """An epilogue's encoded rows and the variant of its code that reads them."""

    table: np.ndarray  # int32 [rows, ROW_WIDTH] (or its transpose, for dense kernels)
    mode: str  # "fast" (32-bit lanes) | "int64"
    fold_zp: bool = False  # the output zero point is inside ROUNDING (x86 fast mode)
    clamp: bool = True  # False when the saturating narrows already clamp to [lo, hi]


def requant_params(channels: Channels, mult, shift, out_zp: int, out_dtype: str) -> RequantParams:
    """Check the requantize values of ``channels`` (from ``prepare_channels``), the one
    validation every ISA uses. ExactnessError when
    - a multiplier lies outside [0, 2^31) or a shift outside [0, 62];
    - a folded bias lies outside int32, i.e. [−2^31, 2^31 − 1]. The bias is the
      accumulator's start and the accumulator is an int32 register: −2^31 is a valid
      start (``prepare_channels`` has already proved the whole sum stays in int32, and the
      arm epilogue's ``sqdmulh`` saturates only for acc = m = −2^31, with m ≥ 0 here), so
      it is accepted on every ISA;
    - lo/hi lie outside the output dtype's range."""
    o = len(channels.bias)
    m, s = per_channel(mult, o, "mult"), per_channel(shift, o, "shift")
    if np.any(m < 0) or np.any(m > INT32_MAX) or np.any(s < 0) or np.any(s > MAX_SHIFT):
        raise ExactnessError(f"mult must be in [0, 2^31) and shift in [0, {MAX_SHIFT}]")
    if np.any(channels.bias > INT32_MAX) or np.any(channels.bias < INT32_MIN):
        raise ExactnessError("bias with the zero point folded in does not fit in int32")
    dmin, dmax = dtype_range(out_dtype)
    if np.any(channels.lo < dmin) or np.any(channels.hi > dmax):
        raise ExactnessError(f"requantize bounds [lo, hi] outside the range of {out_dtype}")
    return RequantParams(channels.bias, m, s, channels.lo, channels.hi, np.asarray(channels.constant, bool),
                         np.asarray(channels.acc_bound, np.int64), int(out_zp), str(out_dtype))


def group_rows(groups: int, out_per_group: int, row_block: int) -> np.ndarray:
    """Row → output channel for GEMM kernels that pad each group's channels to a multiple
    of ``row_block``: −1 for padding rows."""
    padded = ceil_to(out_per_group, row_block)
    return np.array([g * out_per_group + r if r < out_per_group else -1 for g in range(groups) for r in range(padded)])


def ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def transposed_columns(rows: RequantRows, n: int, lanes_block: int, padding_row: dict) -> np.ndarray:
    """The rows of ``n`` channels as columns int32 [ROW_WIDTH, n padded to ``lanes_block``]
    (dense kernels hold output channels in lanes); padding channels get ``padding_row``
    ({column: value})."""
    table = np.zeros((ROW_WIDTH, ceil_to(n, lanes_block)), np.int32)
    table[:, :n] = rows.table.T
    for column, value in padding_row.items():
        table[column, n:] = value
    return table
