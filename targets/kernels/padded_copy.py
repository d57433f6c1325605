"""The zero-point padded copy of an input plane, one TVMScript macro for every kernel that
reads through padding (GEMM im2col and depthwise, on every ISA).

Note: TVMScript parses a function from its source file when it is built; editing this
file while a build is running makes that build fail."""
from __future__ import annotations

from typing import Callable

from tvm.script import tirx as T

from .geometry import ConvGeometry


def plane_copy_macro(geom: ConvGeometry, pad_value, convert: Callable = lambda v: v):
    """A macro ``copy(dst, plane, src, src_start)``: the plane src[src_start + y·W + x]
    (H × W, flat) into padded plane number ``plane`` of dst, dst[(plane·Hp + y)·Wp + x]
    (flat), ``pad_value``
    (a TIR constant of dst's dtype) on the borders, 16 values at a time where it can;
    ``convert(v)`` turns loaded values (vectors of 16 or scalars) into dst's dtype."""
    h, wd = geom.height, geom.width
    pt, _, pl, pr = geom.padding
    hp, wp_ = geom.padded_height, geom.padded_width

    @T.macro
    def copy(dst, plane, src, src_start):
        for yy in range(hp):
            if yy < pt or yy >= pt + h:
                for xx in range(wp_):
                    dst[(plane * hp + yy) * wp_ + xx] = pad_value
            else:
                for xx in range(pl):
                    dst[(plane * hp + yy) * wp_ + xx] = pad_value
                for xx in range(pr):
                    dst[(plane * hp + yy) * wp_ + pl + wd + xx] = pad_value
                for v in range(wd // 16):
                    dst[T.ramp((plane * hp + yy) * wp_ + pl + v * 16, 1, 16)] = convert(
                        src[T.ramp(src_start + (yy - pt) * wd + v * 16, 1, 16)])
                for lane in range(wd % 16):
                    dst[(plane * hp + yy) * wp_ + pl + wd // 16 * 16 + lane] = convert(
                        src[src_start + (yy - pt) * wd + wd // 16 * 16 + lane])
    return copy
