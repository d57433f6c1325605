"""Fixed-point arithmetic of the integer program: the one definition the interpreter, the
TVM lowerings and docs/semantics.md follow.

A real multiplier M > 0 is held as an int32 ``m`` in [2^30, 2^31) and a right shift ``S``:
M ≈ m / 2^S. Requantizing an integer accumulator ``acc``:

    requantize(acc) = clamp(z + ((acc·m + 2^(S−1)) >> S), lo, hi)

in int64 (|acc| < 2^31 and m < 2^31, so acc·m fits), ``>>`` an arithmetic shift: one rounding,
half up (toward +∞). Every op that rescales uses it.
"""
from __future__ import annotations

import math

import numpy as np

MAX_SHIFT = 62


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(m, S) with m in [2^30, 2^31) and M ≈ m / 2^S (S in [0, 62]). Multipliers too small to
    hold with S ≤ 62 lose low bits of m (their products round to 0 anyway)."""
    if not (real > 0 and math.isfinite(real)):
        raise ValueError(f"a requantization multiplier must be positive and finite, got {real}")
    mantissa, exponent = math.frexp(real)  # real = mantissa · 2^exponent, mantissa in [0.5, 1)
    m = int(round(mantissa * (1 << 31)))
    if m == 1 << 31:
        m //= 2
        exponent += 1
    shift = 31 - exponent
    if shift < 0:
        raise ValueError(f"requantization multiplier {real} is too large (>= 2^31)")
    if shift > MAX_SHIFT:
        m >>= shift - MAX_SHIFT
        shift = MAX_SHIFT
    return m, shift


def quantize_multipliers(reals) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (m, S) arrays (int64) for an array of real multipliers."""
    pairs = [quantize_multiplier(float(r)) for r in np.ravel(reals)]
    return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)


def rounding_shift(x: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """(x + 2^(S−1)) >> S for int64 x (S ≥ 0; S = 0 leaves x)."""
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(x + half, shift)


def requantize(acc: np.ndarray, m, shift, zero_point: int, lo, hi) -> np.ndarray:
    """clamp(z + ((acc·m + 2^(S−1)) >> S), lo, hi) in int64; m, S, lo, hi broadcast with acc."""
    acc = np.asarray(acc, dtype=np.int64)
    out = rounding_shift(acc * np.asarray(m, dtype=np.int64), shift) + np.int64(zero_point)
    return np.clip(out, lo, hi)


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray, bits: int = 32) -> np.ndarray:
    """round_half_even(b / (s_x·s_w)) saturated to int``bits`` (int64 array)."""
    limit = 2 ** (bits - 1) - 1
    q = np.rint(np.asarray(bias, dtype=np.float64) / (np.float64(input_scale) * np.asarray(weight_scales, dtype=np.float64)))
    return np.clip(q, -limit - 1, limit).astype(np.int64)


def quantize_values(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """The edge quantizer, in float32 exactly as quantized_decomposed.quantize_per_tensor:
    clamp(round_half_even(x · f32(1/s)) + z, qmin, qmax)."""
    inv = np.float32(1.0 / scale)
    y = np.rint(np.asarray(x, dtype=np.float32) * inv) + np.float32(zero_point)
    return np.clip(y, qmin, qmax).astype(np.int64)


def dequantize_values(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """(q − z)·s in float32, as quantized_decomposed.dequantize_per_tensor."""
    return (np.asarray(q).astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
