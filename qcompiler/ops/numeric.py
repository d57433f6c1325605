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
    """The sliding windows of an NCHW array, padded by ``pad_value``: [n, c, ho, wo, kh, kw].
    ``padding`` is [ph, pw] (both sides) or [top, left, bottom, right]."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, left, bottom, right = padding4(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    win = np.lib.stride_tricks.sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def padding4(padding) -> list[int]:
    """[top, left, bottom, right] from [ph, pw] or [top, left, bottom, right]."""
    padding = [int(p) for p in padding]
    return padding * 2 if len(padding) == 2 else padding


def pool_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int = 1, ceil_mode: bool = False) -> int:
    """The output size of a pooling window along one dim, as PyTorch's
    ``pooling_output_shape`` (aten/src/ATen/native/Pool.h): with ``ceil_mode`` the last
    window may run past the padded input, but a window that would start in the right
    padding is dropped."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def ceil_extra(size: int, kernel: int, pad: int, stride: int, dilation: int, out: int) -> int:
    """How much padding beyond ``pad`` the far side needs for ``out`` windows of stride
    ``stride`` (0 unless ceil_mode adds a window running past the padded input)."""
    return max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - (size + 2 * pad))


def adaptive_windows(size: int, out: int) -> tuple[list[int], list[int]]:
    """(starts, ends) of adaptive pooling's windows along one dim, as PyTorch's
    ``start_index``/``end_index`` (aten/src/ATen/native/AdaptivePooling.h):
    start = floor(i·size/out), end = ceil((i+1)·size/out)."""
    starts = [(i * size) // out for i in range(out)]
    ends = [-((-(i + 1) * size) // out) for i in range(out)]
    return starts, ends


def adaptive_reduce(x: np.ndarray, output_size, reduce) -> np.ndarray:
    """``reduce(window, axis)`` (np.sum, np.max) of an NCHW array over adaptive pooling's
    windows (``adaptive_windows``), rows then columns: [n, c, Ho, Wo]."""
    for axis, out in ((2, int(output_size[0])), (3, int(output_size[1]))):
        starts, ends = adaptive_windows(x.shape[axis], out)
        x = np.concatenate([reduce(np.take(x, range(s, e), axis=axis), axis=axis, keepdims=True)
                            for s, e in zip(starts, ends)], axis=axis)
    return x
