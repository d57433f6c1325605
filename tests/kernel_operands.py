"""Random operands of an int8 kernel test (targets/kernels/x86.py, targets/kernels/arm.py): the
requantize parameters and ranges, with the shift mixes that select each epilogue."""
import numpy as np

from qcompiler.fixed_point import quantize_multipliers


def dtype_range(dtype):
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def operands(rng, o, k, x_dtype, out_dtype, shift_kind="fast", full_range=False):
    """bias, x_zp, mult, shift, out_zp, lo, hi for o output channels of k products."""
    if shift_kind == "fast":  # S >= 33 everywhere: x86's 32-bit epilogue, arm's sqdmulh one
        mult, shift = quantize_multipliers(rng.uniform(0.5, 2.0, o) * 2.0 ** -rng.uniform(3, 12, o) / np.sqrt(k))
    elif shift_kind == "mixed":  # S from 0 to 62: the int64 epilogue
        mult = rng.integers(2**30, 2**31, o)
        shift = np.array([[0, 1, 20, 31, 32, 33, 40, 62][i % 8] for i in range(o)])
    else:
        mult, shift = quantize_multipliers(rng.uniform(0.3, 3.0, o))
    dmin, dmax = dtype_range(out_dtype)
    if full_range:
        lo, hi = np.full(o, dmin), np.full(o, dmax)
    else:
        lo, hi = rng.integers(dmin, dmin + 60, o), rng.integers(dmax - 60, dmax + 1, o)
    xmin, xmax = dtype_range(x_dtype)
    return dict(bias=rng.integers(-30000, 30000, o), x_zp=int(rng.integers(xmin, xmax + 1)), mult=mult, shift=shift,
                out_zp=int(rng.integers(dmin, dmax + 1)), lo=lo, hi=hi)
