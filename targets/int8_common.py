"""What the int8 kernel modules share (targets/x86_int8.py, targets/x86_u8s8.py,
targets/arm_int8.py): the exactness contract (``ExactnessError``, ``_prepare_channels``
folding the input zero point into the bias and bounding each channel's accumulator),
operand and shape helpers, TIR vector helpers, and how a kernel enters a Relax module
(``emit_call_tir``, ``kernel_info``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import tvm

INT32_MAX = 2**31 - 1


class ExactnessError(ValueError):
    """The kernel cannot guarantee a bit-exact result for these operands (keep the default
    lowering)."""


def _scope(nbytes: int) -> str:
    """Storage of a scratch buffer allocated inside a kernel. In TVM 0.27's CPU lowering a
    "global" allocation becomes a stack alloca (LLVM keeps small ones in registers), while
    "local" goes through TVMBackendAllocWorkspace (a per-thread pool): large buffers use
    the latter so that worker threads' stacks are never at risk."""
    return "global" if nbytes <= 65536 else "local"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _drange(dtype: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def _per_channel(a, n: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    if a.size == 1:
        a = np.full(n, int(a[0]), np.int64)
    if a.size != n:
        raise ValueError(f"{name} has {a.size} values for {n} channels")
    return a


@dataclass
class Channels:
    """Per-output-channel operands as the kernels take them."""

    w2: np.ndarray  # int8 [O, K] (zeroed for constant channels)
    bias: np.ndarray  # int64 [O]: bias − z·Σw (0 for constant channels)
    lo: np.ndarray  # int64 [O]
    hi: np.ndarray  # int64 [O]
    acc_bound: np.ndarray  # int64 [O]: bound of |Σ x·w + bias| over every input
    const: np.ndarray  # bool [O]: the channel's output is lo (= hi) for every input


def _prepare_channels(w2: np.ndarray, bias, x_dtype: str, x_zp: int, mult, shift, out_zp: int, lo, hi) -> Channels:
    """Fold the input zero point into the bias and bound each channel's accumulator.

    The kernels sum in int32 with wrap-around adds, which equals the reference's int64
    sum Σ (x − z)·w + bias whenever that true sum fits in int32. A channel whose true sum
    can leave int32 (e.g. a bias saturated to −2^31 by quantization, as in EfficientNet-
    Lite0's dead channels) is still exact when its requantized output is the same at both
    ends of its accumulator's range: requantize is monotone in the accumulator, so the
    output is then that constant for every input, and the channel becomes w = 0, bias = 0,
    lo = hi = the constant. Otherwise ``ExactnessError``."""
    from qcompiler.fixed_point import requantize

    o = w2.shape[0]
    xmin, xmax = _drange(x_dtype)
    wl = w2.astype(np.int64)
    pos, neg = np.clip(wl, 0, None).sum(1), np.clip(wl, None, 0).sum(1)
    bias = _per_channel(0 if bias is None else bias, o, "bias")
    lo, hi = _per_channel(lo, o, "lo"), _per_channel(hi, o, "hi")
    # range of the true accumulator Σ (x − z)·w + bias over x in [xmin, xmax]
    acc_hi = pos * (xmax - x_zp) + neg * (xmin - x_zp) + bias
    acc_lo = pos * (xmin - x_zp) + neg * (xmax - x_zp) + bias
    over = (acc_hi > INT32_MAX) | (acc_lo < -INT32_MAX - 1)
    w2 = w2.copy()
    bias_f = bias - x_zp * wl.sum(1)
    if over.any():
        m, sh = _per_channel(mult, o, "mult")[over], _per_channel(shift, o, "shift")[over]
        if np.any(np.abs(acc_lo[over]) >= 2**32) or np.any(np.abs(acc_hi[over]) >= 2**32):
            raise ExactnessError("an accumulator can exceed 2^32")
        out_lo = requantize(acc_lo[over], m, sh, out_zp, lo[over], hi[over])
        out_hi = requantize(acc_hi[over], m, sh, out_zp, lo[over], hi[over])
        if np.any(out_lo != out_hi):
            raise ExactnessError("the accumulator of a channel can exceed int32 and its output is not constant")
        w2[over] = 0
        bias_f[over] = 0
        lo, hi = lo.copy(), hi.copy()
        lo[over] = out_lo
        hi[over] = out_lo
        pos, neg = np.where(over, 0, pos), np.where(over, 0, neg)
    acc_bound = np.maximum(np.abs(pos * xmax + neg * xmin + bias_f), np.abs(pos * xmin + neg * xmax + bias_f))
    return Channels(w2, bias_f, lo, hi, acc_bound, over)


def _pad4(padding: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from a conv's symmetric (ph, pw) or an explicit 4-tuple."""
    padding = tuple(int(v) for v in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) == 4 and min(padding) >= 0:
        return padding
    raise ValueError(f"padding must be (ph, pw) or (top, bottom, left, right), non-negative: got {padding}")


def kernel_info(func: tvm.tirx.PrimFunc) -> dict:
    """The kernel choice recorded on a PrimFunc built here (kind, tiling, epilogue)."""
    attr = func.attrs.get("qcompiler.kernel") if func.attrs is not None else None
    return dict(attr) if attr is not None else {}


def emit_call_tir(bb, func: tvm.tirx.PrimFunc, consts: Sequence[np.ndarray], x, name_hint: Optional[str] = None):
    """Emit ``relax.call_tir(func, [x, *consts])`` in the current dataflow block of the
    relax.BlockBuilder ``bb``: the function is added without its global symbol (Relax
    names it, so that several kernels may share a name) and the constants become Relax
    constants. Returns the bound output variable."""
    from tvm import relax

    out = func.params[-1].ty
    out_sinfo = relax.TensorType([int(v) for v in out.shape], str(out.dtype))
    symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
    name = name_hint or (str(symbol) if symbol is not None else "kernel")
    gv = bb.add_func(func.without_attr("global_symbol"), name)
    return bb.emit(relax.call_tir(gv, [x, *[relax.const(c) for c in consts]], out_sinfo))


def concat_vectors(parts: list):
    """Concatenate vectors (a Shuffle of all their lanes in order)."""
    if len(parts) == 1:
        return parts[0]
    idx, off = [], 0
    for p in parts:
        ln = p.ty.dtype.lanes
        idx += list(range(off, off + ln))
        off += ln
    return tvm.tirx.Shuffle(parts, idx)
