"""qcompiler.adaptive_max_pool2d: adaptive max pooling (``nn.AdaptiveMaxPool2d``) of integer
values: the max over PyTorch's adaptive windows [floor(i·H/Ho), ceil((i+1)·H/Ho)) along each
dim (``numeric.adaptive_windows``). Max commutes with a monotone quantizer, so the output
keeps the input's parameters and equals the simulation exactly. The ATen op returns
(values, indices); only the values have an integer form (``integer_outputs=0``): a model
that uses the indices keeps the pool in float."""
from __future__ import annotations

import numpy as np
import torch

from ..graph import node_label
from .adaptive_avg_pool2d import reduce_windows
from .convert import ConversionError, shape_of
from .numeric import adaptive_reduce
from .registry import PASSTHROUGH, OpDef, Source

aten = torch.ops.aten


def reference(x, output_size):
    return adaptive_reduce(np.asarray(x), output_size, np.max)


def on_integers(cv, node, x):
    """adaptive_max_pool2d(DQ(x), (Ho, Wo)) → qcompiler.adaptive_max_pool2d on x's integers
    (the values output)."""
    shape = shape_of(node.args[0])
    if shape is None or len(shape) != 4:
        raise ConversionError(f"{node_label(node)}: adaptive max pooling of an NCHW input with a known shape has an "
                              f"integer form; the input's shape is {shape}")
    output_size = [int(shape[2 + d]) if v is None else int(v) for d, v in enumerate(node.args[1])]
    return cv.emit_for(node, OP.target, (x.node, output_size))


def lowering(ctx, node, args, kwargs):
    """The max of each window (one strided_slice each), rows then columns."""
    x, output_size = args
    return reduce_windows(ctx, ctx.expr(x), output_size, ctx.R.max)


OP = OpDef(
    name="adaptive_max_pool2d", doc="adaptive max pooling of integer values (the values output)",
    schema="(Tensor x, int[] output_size) -> Tensor", reference=reference, out_dtype="input", lowering=lowering,
    sources={aten.adaptive_max_pool2d.default: Source(PASSTHROUGH, on_integers=on_integers, integer_outputs=0)},
    kernel_words=("max", "pool"),
)
