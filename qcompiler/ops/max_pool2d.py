"""qcompiler.max_pool2d: the max over windows of integer values (a monotone map commutes
with max, so the output keeps the input's parameters); padding never wins (qmin − 1 is
below every value). With ``ceil_mode`` the output size is PyTorch's
(``numeric.pool_output_size``: a last window that would start in the right padding is
dropped) and the windows it adds past the padded input are covered by extra padding at the
bottom/right (``padding`` = [top, left, bottom, right]): clipped windows, as PyTorch's."""
from __future__ import annotations

import numpy as np
import torch

from ..graph import node_label
from .convert import ConversionError, pair, shape_of
from .numeric import ceil_extra, padding4, pool_output_size, windows
from .registry import PASSTHROUGH, OpDef, Source

aten = torch.ops.aten


def reference(x, kernel, stride, padding, dilation, qmin):
    win = windows(np.asarray(x, dtype=np.int64), kernel, stride, padding, dilation, pad_value=qmin - 1)
    return win.max(axis=(-1, -2))


def on_integers(cv, node, x):
    """max_pool2d[_with_indices](DQ(x)) → qcompiler.max_pool2d on x's integers."""
    a = node.args
    kernel = list(a[1])
    stride = list(a[2]) if len(a) > 2 and a[2] else kernel
    padding = list(a[3]) if len(a) > 3 else [0, 0]
    dilation = list(a[4]) if len(a) > 4 else [1, 1]
    kernel, stride, padding, dilation = pair(kernel), pair(stride), pair(padding), pair(dilation)
    if len(a) > 5 and a[5]:  # ceil_mode
        shape = shape_of(a[0])
        if shape is None or len(shape) != 4:
            raise ConversionError(f"{node_label(node)}: max pooling with ceil_mode of an NCHW input with a known shape "
                                  f"has an integer form; the input's shape is {shape}")
        extra = [ceil_extra(n, k, p, s, d, pool_output_size(n, k, p, s, d, True))
                 for n, k, p, s, d in zip((int(v) for v in shape[2:]), kernel, padding, stride, dilation)]
        padding = [padding[0], padding[1], padding[0] + extra[0], padding[1] + extra[1]]
    return cv.emit_for(node, OP.target, (x.node, kernel, stride, padding, dilation, x.qmin))


def lowering(ctx, node, args, kwargs):
    """TOPI pads with the dtype's minimum, which is ≤ qmin: like qmin − 1, it never wins
    over a window's valid values (every window holds one). ceil_mode is already in the
    explicit bottom/right padding (TVM's own ceil_mode is not used)."""
    x, kernel, stride, padding, dilation, qmin = args
    return ctx.R.nn.max_pool2d(ctx.expr(x), pool_size=list(kernel), strides=list(stride), padding=padding4(padding),
                               dilation=list(dilation), ceil_mode=False)


OP = OpDef(
    name="max_pool2d", doc="max pooling of integer values",
    schema="(Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation, int qmin) -> Tensor",
    reference=reference, out_dtype="input", lowering=lowering,
    sources={aten.max_pool2d_with_indices.default: Source(PASSTHROUGH, on_integers=on_integers, integer_outputs=0),
             aten.max_pool2d.default: Source(PASSTHROUGH, on_integers=on_integers)},
    kernel_words=("pool",),
)
