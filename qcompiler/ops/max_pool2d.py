"""qcompiler.max_pool2d: the max over windows of integer values (a monotone map commutes
with max, so the output keeps the input's parameters); padding never wins (qmin − 1 is
below every value)."""
from __future__ import annotations

import numpy as np
import torch

from ..graph import node_label
from .convert import ConversionError, pair
from .numeric import windows
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
    if len(a) > 5 and a[5]:
        raise ConversionError(f"{node_label(node)}: max pooling with ceil_mode=True has no integer form yet")
    return cv.emit_for(node, OP.target, (x.node, kernel, pair(stride), pair(padding), pair(dilation), x.qmin))


def lowering(ctx, node, args, kwargs):
    """TOPI pads with the dtype's minimum, which is ≤ qmin: like qmin − 1, it never wins
    over a window's valid values (every window holds one)."""
    x, kernel, stride, padding, dilation, qmin = args
    (ph, pw) = padding
    return ctx.R.nn.max_pool2d(ctx.expr(x), pool_size=list(kernel), strides=list(stride), padding=[ph, pw, ph, pw],
                               dilation=list(dilation), ceil_mode=False)


OP = OpDef(
    name="max_pool2d", doc="max pooling of integer values",
    schema="(Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation, int qmin) -> Tensor",
    reference=reference, out_dtype="input", lowering=lowering,
    sources={aten.max_pool2d_with_indices.default: Source(PASSTHROUGH, on_integers=on_integers, integer_outputs=0),
             aten.max_pool2d.default: Source(PASSTHROUGH, on_integers=on_integers)},
    kernel_words=("pool",),
)
