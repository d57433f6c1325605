"""The exactness contract every int8 kernel of ``targets/kernels`` keeps, and the operand
checks it starts from.

A kernel sums int8 products in int32 with wrap-around adds. That equals the reference's
int64 sum Σ (x − z)·w + bias (``qcompiler.kernels``) whenever the true sum fits in int32;
``prepare_channels`` proves it per output channel, or makes a channel whose output is
provably constant into a constant channel, or raises ``ExactnessError`` ("keep the
generic lowering")."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.fixed_point import requantize

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1
KERNEL_DTYPES = ("uint8", "int8")


class ExactnessError(ValueError):
    """The kernel cannot guarantee a bit-exact result for these operands (keep the default
    lowering). The message says why; it is recorded as the reason of the fallback."""


def ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉ for integers."""
    return -(-a // b)


def dtype_range(dtype: str) -> tuple[int, int]:
    """(min, max) of an integer dtype."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def per_channel(values, n: int, name: str) -> np.ndarray:
    """``values`` (a scalar or ``n`` values) as int64 [n]; ValueError for another count."""
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if values.size == 1:
        values = np.full(n, int(values[0]), np.int64)
    if values.size != n:
        raise ValueError(f"{name} has {values.size} values for {n} channels")
    return values


def scratch_scope(nbytes: int) -> str:
    """Storage of a scratch buffer allocated inside a kernel. In TVM 0.27's CPU lowering a
    "global" allocation becomes a stack alloca (LLVM keeps small ones in registers), while
    "local" goes through TVMBackendAllocWorkspace (a per-thread pool): large buffers use
    the latter so that worker threads' stacks are never at risk."""
    return "global" if nbytes <= 65536 else "local"


def check_dtypes(x_dtype: str, out_dtype: str) -> None:
    """ExactnessError unless activations and outputs are uint8 or int8."""
    if x_dtype not in KERNEL_DTYPES or out_dtype not in KERNEL_DTYPES:
        raise ExactnessError(f"x dtype {x_dtype} / out dtype {out_dtype}: only uint8/int8 are supported")


def int8_weights(w) -> np.ndarray:
    """``w`` as int8; ExactnessError when a value lies outside int8."""
    w = np.asarray(w)
    if w.dtype != np.int8 and (w.min(initial=0) < -128 or w.max(initial=0) > 127):
        raise ExactnessError("weights must be int8")
    return w.astype(np.int8)


@dataclass
class Channels:
    """Per-output-channel operands as the kernels take them (O output channels, K
    reduction indices)."""

    weights: np.ndarray  # int8 [O, K] (zeroed for constant channels)
    bias: np.ndarray  # int64 [O]: bias − z·Σw (0 for constant channels)
    lo: np.ndarray  # int64 [O]
    hi: np.ndarray  # int64 [O]
    acc_bound: np.ndarray  # int64 [O]: bound of |Σ x·w + bias| over every input
    constant: np.ndarray  # bool [O]: the channel's output is lo (= hi) for every input


def _accumulator_range(weights: np.ndarray, bias: np.ndarray, x_dtype: str, x_zp: int):
    """(low, high) int64 [O]: the range of the true accumulator Σ (x − z)·w + bias over
    x in the dtype's range; and the sums of the positive / negative weights."""
    xmin, xmax = dtype_range(x_dtype)
    wide = weights.astype(np.int64)
    pos, neg = np.clip(wide, 0, None).sum(1), np.clip(wide, None, 0).sum(1)
    high = pos * (xmax - x_zp) + neg * (xmin - x_zp) + bias
    low = pos * (xmin - x_zp) + neg * (xmax - x_zp) + bias
    return low, high, pos, neg


def prepare_channels(weights: np.ndarray, bias, x_dtype: str, x_zp: int, mult, shift, out_zp: int, lo,
                     hi) -> Channels:
    """Fold the input zero point into the bias and bound each channel's accumulator.

    ``weights`` int8 [O, K]; ``bias``, ``mult``, ``shift``, ``lo``, ``hi``: scalars or [O].
    A channel whose true sum can leave int32 (e.g. a bias saturated to −2^31 by
    quantization, as in EfficientNet-Lite0's dead channels) is still exact when its
    requantized output is the same at both ends of its accumulator's range: requantize is
    monotone in the accumulator, so the output is then that constant for every input, and
    the channel becomes w = 0, bias = 0, lo = hi = the constant. Otherwise
    ``ExactnessError``."""
    o = weights.shape[0]
    xmin, xmax = dtype_range(x_dtype)
    bias = per_channel(0 if bias is None else bias, o, "bias")
    lo, hi = per_channel(lo, o, "lo"), per_channel(hi, o, "hi")
    acc_lo, acc_hi, pos, neg = _accumulator_range(weights, bias, x_dtype, x_zp)
    over = (acc_hi > INT32_MAX) | (acc_lo < INT32_MIN)
    weights = weights.copy()
    bias_folded = bias - x_zp * weights.astype(np.int64).sum(1)
    if over.any():
        m, sh = per_channel(mult, o, "mult")[over], per_channel(shift, o, "shift")[over]
        if np.any(np.abs(acc_lo[over]) >= 2**32) or np.any(np.abs(acc_hi[over]) >= 2**32):
            raise ExactnessError("an accumulator can exceed 2^32")
        out_lo = requantize(acc_lo[over], m, sh, out_zp, lo[over], hi[over])
        out_hi = requantize(acc_hi[over], m, sh, out_zp, lo[over], hi[over])
        if np.any(out_lo != out_hi):
            raise ExactnessError("the accumulator of a channel can exceed int32 and its output is not constant")
        weights[over] = 0
        bias_folded[over] = 0
        lo, hi = lo.copy(), hi.copy()
        lo[over] = out_lo
        hi[over] = out_lo
        pos, neg = np.where(over, 0, pos), np.where(over, 0, neg)
    acc_bound = np.maximum(np.abs(pos * xmax + neg * xmin + bias_folded),
                           np.abs(pos * xmin + neg * xmax + bias_folded))
    return Channels(weights, bias_folded, lo, hi, acc_bound, over)


def linear_operands(x_shape, x_dtype, w, out_dtype) -> tuple[tuple[int, ...], str, str, np.ndarray]:
    """Checked operands of a linear kernel: (x_shape, x_dtype, out_dtype, w int8 [O, K]);
    ExactnessError for dtypes the kernels do not take, ValueError for x [..., K'] with
    K' ≠ K."""
    x_dtype, out_dtype = str(x_dtype), str(out_dtype)
    check_dtypes(x_dtype, out_dtype)
    x_shape = tuple(int(v) for v in x_shape)
    w = int8_weights(w)
    if x_shape[-1] != w.shape[1]:
        raise ValueError(f"linear shapes: x {x_shape}, w {w.shape}")
    return x_shape, x_dtype, out_dtype, w


def conv_operands(x_dtype, w, mult, shift, out_dtype) -> tuple[str, str, np.ndarray]:
    """Checked operands of a conv kernel: (x_dtype, out_dtype, w int8); ValueError without
    a requantize multiplier, ExactnessError for dtypes the kernels do not take."""
    if mult is None or shift is None:
        raise ValueError("mult and shift (the requantize multiplier) are required")
    x_dtype, out_dtype = str(x_dtype), str(out_dtype)
    check_dtypes(x_dtype, out_dtype)
    return x_dtype, out_dtype, int8_weights(w)
