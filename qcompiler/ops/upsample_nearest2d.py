"""qcompiler.upsample_nearest2d: nearest-neighbour upsampling (nn.Upsample(mode="nearest") and
mode="nearest-exact", F.interpolate likewise) of NCHW integer values: a copy of integer codes, so the
output keeps the input's quantization parameters and equals the simulation exactly.

    out[n, c, i, j] = x[n, c, rows[i], cols[j]]

``rows`` and ``cols`` are found at conversion by running the float op itself on tensors of
row and column indices, so they follow torch's index rule for every size and scale factor
(floor(i·scale) with torch's float scale; for "nearest-exact", floor((i + 0.5)·scale)).
Capture keeps ``aten._upsample_nearest_exact2d`` whole (torch.export would decompose it into
index arithmetic)."""
from __future__ import annotations

import numpy as np
import torch

from ..graph import node_label
from .convert import ConversionError, shape_of
from .registry import PASSTHROUGH, OpDef, Source

aten = torch.ops.aten
SOURCES = (aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)
EXACT_SOURCES = (aten._upsample_nearest_exact2d.vec, aten._upsample_nearest_exact2d.default)


def reference(x, rows, cols):
    x = np.asarray(x)
    return x[:, :, np.asarray(rows)][:, :, :, np.asarray(cols)]


def source_indices(node) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): the input row and column each output row and column copies, from the
    float op run on index tensors."""
    shape = shape_of(node.args[0])
    if shape is None or len(shape) != 4:
        raise ConversionError(f"{node_label(node)}: nearest upsampling of an NCHW tensor with a known shape has an "
                              f"integer form; the input's shape is {shape}")
    h, w = int(shape[2]), int(shape[3])
    grid_rows = torch.arange(h, dtype=torch.float32).reshape(1, 1, h, 1).expand(1, 1, h, w).contiguous()
    grid_cols = torch.arange(w, dtype=torch.float32).reshape(1, 1, 1, w).expand(1, 1, h, w).contiguous()
    with torch.no_grad():
        rows = node.target(grid_rows, *node.args[1:], **node.kwargs)[0, 0, :, 0]
        cols = node.target(grid_cols, *node.args[1:], **node.kwargs)[0, 0, 0, :]
    return rows.to(torch.int64).numpy(), cols.to(torch.int64).numpy()


def on_integers(cv, node, x):
    """upsample_nearest2d(DQ(x)) → qcompiler.upsample_nearest2d on x's integers."""
    rows, cols = source_indices(node)
    return cv.emit_for(node, OP.target, (x.node, cv.const(rows, f"{node.name}_rows"), cv.const(cols, f"{node.name}_cols")))


def lowering(ctx, node, args, kwargs):
    """Two gathers: rows along H, then columns along W."""
    x, rows, cols = args
    R = ctx.R
    by_rows = ctx.emit(R.take(ctx.expr(x), ctx.const(rows, "int32"), axis=2))
    return R.take(by_rows, ctx.const(cols, "int32"), axis=3)


OP = OpDef(
    name="upsample_nearest2d", doc="nearest-neighbour upsampling of NCHW integer values (a copy of codes)",
    schema="(Tensor x, Tensor rows, Tensor cols) -> Tensor", reference=reference, out_dtype="input", lowering=lowering,
    sources={**{t: Source(PASSTHROUGH, on_integers=on_integers) for t in SOURCES},
             **{t: Source(PASSTHROUGH, on_integers=on_integers, keep_whole=True) for t in EXACT_SOURCES}},
)
