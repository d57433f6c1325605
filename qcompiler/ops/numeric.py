"""Shared pieces of the numpy references: values are int64 inside; dot products are exact
(computed in float64, every partial sum an integer below 2^53, which is checked, so BLAS can
do them fast); every rescale goes through ``fixed_point.requantize``."""
from __future__ import annotations

import numpy as np

from ..errors import QCompilerError

EXACT_LIMIT = float(2**53)


def exact_check(a: np.ndarray, b: np.ndarray, k: int, what: str) -> None:
    """Raise if a dot product of length ``k`` of ``a`` and ``b`` values could leave the
    integers float64 holds exactly."""
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * k
    if bound >= EXACT_LIMIT:
        raise QCompilerError(f"{what}: accumulation bound {bound:.3g} exceeds 2^53; the interpreter cannot be exact here")


def channel_shape(arr, ndim: int, axis: int) -> np.ndarray:
    """A per-channel parameter (int64) shaped to broadcast along ``axis`` of an ``ndim``-d
    tensor; a scalar if it has one element."""
    arr = np.asarray(arr, dtype=np.int64)
    if arr.size == 1:
        return arr.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return arr.reshape(shape)


def windows(x: np.ndarray, kernel, stride, padding, dilation=(1, 1), pad_value: int = 0) -> np.ndarray:
    """The sliding windows of an NCHW array, padded by ``pad_value``: [n, c, ho, wo, kh, kw]."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    win = np.lib.stride_tricks.sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]
