"""Reference kernels of the integer ops, in numpy. Values are int64 inside; dot products are
exact (computed in float64, every partial sum an integer below 2^53, which is checked, so
BLAS can do them fast); every rescale goes through ``fixed_point.requantize``."""
from __future__ import annotations

import numpy as np

from .errors import QCompilerError
from .fixed_point import dequantize_values, quantize_values, requantize, rounding_shift

EXACT_LIMIT = float(2**53)


def _exact_check(a: np.ndarray, b: np.ndarray, k: int, what: str) -> None:
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * k
    if bound >= EXACT_LIMIT:
        raise QCompilerError(f"{what}: accumulation bound {bound:.3g} exceeds 2^53; the interpreter cannot be exact here")


def _channel_shape(arr, ndim: int, axis: int) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.int64)
    if arr.size == 1:
        return arr.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return arr.reshape(shape)


def quantize(x, scale, zp, qmin, qmax):
    return quantize_values(x, scale, zp, qmin, qmax)


def dequantize(q, scale, zp):
    return dequantize_values(q, scale, zp)


def conv2d(x, w, bias, x_zp, stride, padding, dilation, groups, mult, shift, out_zp, lo, hi):
    """acc[n,o,y,x] = Σ (x − z_x)·w + bias[o] (zero padding of x − z_x, i.e. padding with z_x);
    out = requantize(acc, mult[o], shift[o], out_zp, lo[o], hi[o])."""
    xc = np.asarray(x, dtype=np.int64) - x_zp
    w = np.asarray(w, dtype=np.int64)
    n, c, h, wd = xc.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(xc, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [n, c, ho, wo, kh, kw]
    ho, wo = win.shape[2], win.shape[3]
    _exact_check(xc, w, cg * kh * kw, "conv2d")
    g = groups
    og = o // g
    if cg == 1 and og == 1:  # depthwise: one filter per channel
        acc = np.einsum("nchwij,cij->nchw", win.astype(np.float64), w[:, 0].astype(np.float64), optimize=True)
    else:
        cols = win.reshape(n, g, cg, ho, wo, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6).reshape(n, g, ho * wo, cg * kh * kw)
        wg = w.reshape(g, og, cg * kh * kw).astype(np.float64)
        acc = np.matmul(cols.astype(np.float64), wg.transpose(0, 2, 1))  # [n, g, ho*wo, og]
        acc = acc.transpose(0, 1, 3, 2).reshape(n, o, ho, wo)
    acc = acc.astype(np.int64) + _channel_shape(bias, 4, 1)
    return requantize(acc, _channel_shape(mult, 4, 1), _channel_shape(shift, 4, 1), out_zp, _channel_shape(lo, 4, 1), _channel_shape(hi, 4, 1))


def linear(x, w, bias, x_zp, mult, shift, out_zp, lo, hi):
    xc = np.asarray(x, dtype=np.int64) - x_zp
    w = np.asarray(w, dtype=np.int64)
    _exact_check(xc, w, w.shape[1], "linear")
    acc = np.matmul(xc.astype(np.float64), w.T.astype(np.float64)).astype(np.int64) + np.asarray(bias, dtype=np.int64)
    nd = acc.ndim
    return requantize(acc, _channel_shape(mult, nd, nd - 1), _channel_shape(shift, nd, nd - 1), out_zp,
                      _channel_shape(lo, nd, nd - 1), _channel_shape(hi, nd, nd - 1))


def add(a, b, a_zp, b_zp, a_mult, b_mult, shift, out_zp, lo, hi):
    """clamp(z + (((a − z_a)·m_a + (b − z_b)·m_b + 2^(S−1)) >> S), lo, hi): one rounding.
    A subtraction has a negative m_b."""
    acc = (np.asarray(a, dtype=np.int64) - a_zp) * np.int64(a_mult) + (np.asarray(b, dtype=np.int64) - b_zp) * np.int64(b_mult)
    return np.clip(rounding_shift(acc, shift) + out_zp, lo, hi)


def mul(a, b, a_zp, b_zp, mult, shift, out_zp, lo, hi):
    acc = (np.asarray(a, dtype=np.int64) - a_zp) * (np.asarray(b, dtype=np.int64) - b_zp)
    return requantize(acc, mult, shift, out_zp, lo, hi)


def matmul(a, b, a_zp, b_zp, mult, shift, out_zp, lo, hi):
    ac = np.asarray(a, dtype=np.int64) - a_zp
    bc = np.asarray(b, dtype=np.int64) - b_zp
    _exact_check(ac, bc, ac.shape[-1], "matmul")
    acc = np.matmul(ac.astype(np.float64), bc.astype(np.float64)).astype(np.int64)
    return requantize(acc, mult, shift, out_zp, lo, hi)


def concat(xs, dim, zps, mults, shifts, out_zp, lo, hi):
    parts = [requantize(np.asarray(x, dtype=np.int64) - z, m, s, out_zp, lo, hi) for x, z, m, s in zip(xs, zps, mults, shifts)]
    return np.concatenate(parts, axis=dim)


def mean(x, dims, keepdim, in_zp, mult, shift, out_zp, lo, hi):
    """requantize(Σ (x − z_in) over dims, m, S): m/2^S ≈ s_in / (count·s_out)."""
    total = (np.asarray(x, dtype=np.int64) - in_zp).sum(axis=tuple(dims), keepdims=keepdim)
    return requantize(total, mult, shift, out_zp, lo, hi)


def avg_pool2d(x, kernel, stride, padding, in_zp, mult, shift, out_zp, lo, hi):
    """Window sums of (x − z_in) (zero padding counted in the divisor), then requantize by
    m/2^S ≈ s_in / (kh·kw·s_out)."""
    xc = np.asarray(x, dtype=np.int64) - in_zp
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = np.pad(xc, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return requantize(win.sum(axis=(-1, -2)), mult, shift, out_zp, lo, hi)


def max_pool2d(x, kernel, stride, padding, dilation, qmin):
    """Max over windows; padding never wins (it is below every value)."""
    x = np.asarray(x, dtype=np.int64)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=qmin - 1)
    win = np.lib.stride_tricks.sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw].max(axis=(-1, -2))


def clamp(x, lo, hi, axis: int):
    x = np.asarray(x, dtype=np.int64)
    return np.clip(x, _channel_shape(lo, x.ndim, axis), _channel_shape(hi, x.ndim, axis))


def requant(x, in_zp, mult, shift, out_zp, lo, hi):
    return requantize(np.asarray(x, dtype=np.int64) - in_zp, mult, shift, out_zp, lo, hi)


def lut(x, table, qmin):
    return np.asarray(table, dtype=np.int64)[np.asarray(x, dtype=np.int64) - qmin]
