"""Conv2d geometry, computed once: the output size formula and the padded plane every
conv kernel works on (NCHW input [N, C, H, W], weights [O, C/groups, kh, kw])."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def padding4(padding: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from a conv's symmetric (ph, pw) or an explicit 4-tuple;
    ValueError otherwise."""
    padding = tuple(int(v) for v in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) == 4 and min(padding) >= 0:
        return padding
    raise ValueError(f"padding must be (ph, pw) or (top, bottom, left, right), non-negative: got {padding}")


def _pair(values: Sequence[int]) -> tuple[int, int]:
    first, second = (int(v) for v in values)
    return first, second


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one conv2d. ``out_height``/``out_width`` follow the one formula
    ⌊(H + pads − d·(k − 1) − 1) / s⌋ + 1; ``padded_height``/``padded_width`` are the
    zero-point padded input plane's."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    group_channels: int  # input channels per group (1: depthwise)
    kernel_h: int
    kernel_w: int
    groups: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    dilation: tuple[int, int]

    @property
    def padded_height(self) -> int:
        return self.height + self.padding[0] + self.padding[1]

    @property
    def padded_width(self) -> int:
        return self.width + self.padding[2] + self.padding[3]

    @property
    def out_height(self) -> int:
        return (self.padded_height - self.dilation[0] * (self.kernel_h - 1) - 1) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        return (self.padded_width - self.dilation[1] * (self.kernel_w - 1) - 1) // self.stride[1] + 1

    @property
    def out_pixels(self) -> int:
        return self.out_height * self.out_width

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def reduction(self) -> int:
        """Reduction length of one output: (C/groups)·kh·kw."""
        return self.group_channels * self.kernel_h * self.kernel_w

    @property
    def is_pointwise(self) -> bool:
        """1×1, stride 1, no padding: the GEMM reads x directly."""
        return (self.kernel_h == self.kernel_w == 1 and self.stride == (1, 1) and self.padding == (0, 0, 0, 0))

    @property
    def is_depthwise(self) -> bool:
        """One input channel per output channel's group (any channel multiplier)."""
        return self.group_channels == 1 and self.groups == self.channels


def conv_geometry(x_shape: Sequence[int], w_shape: Sequence[int], stride, padding, dilation,
                  groups: int) -> ConvGeometry:
    """The geometry of a conv of x [N, C, H, W] by w [O, C/groups, kh, kw]; ``padding`` is
    (ph, pw) or (top, bottom, left, right). ValueError for inconsistent shapes or an empty
    output."""
    n, c, h, wd = (int(s) for s in x_shape)
    o, cg, kh, kw = (int(s) for s in w_shape)
    groups = int(groups)
    if c != cg * groups or o % groups:
        raise ValueError(f"conv2d shapes: x {tuple(x_shape)}, w {tuple(w_shape)}, groups {groups}")
    geom = ConvGeometry(n, c, h, wd, o, cg, kh, kw, groups, _pair(stride), padding4(padding), _pair(dilation))
    if geom.out_height <= 0 or geom.out_width <= 0:
        raise ValueError("empty conv2d output")
    return geom
