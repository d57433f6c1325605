"""qcompiler.pad: reflect / replicate / circular padding of integer values (``F.pad`` with
those modes, ``nn.ReflectionPad2d`` and the like, ``nn.Conv1d/2d(padding_mode=...)``). It is
a gather of codes, so the output keeps the input's quantization parameters and equals the
simulation exactly:

    reflect     mirror without repeating the edge   (numpy "reflect")
    replicate   repeat the edge value               (numpy "edge")
    circular    wrap around from the other side     (numpy "wrap")

``pad`` is torch's list, last dimension first, (left, right, top, bottom, ...); a negative
entry crops first, and the padding is taken from the cropped tensor, as torch does.
Constant padding (``F.pad(mode="constant", value=0)``, ``nn.ZeroPad2d``) becomes
``aten.constant_pad_nd`` of the codes by the zero point (``layout.py``), the form the conv
kernels take into their own padding; padding by any other value has no integer form
(its value is not a code of the input's parameters in general) and is listed as needing
float. Capture keeps ``aten.pad`` whole (``Source(keep_whole=True)``): torch.export's
default decomposition would turn it into index arithmetic (reflect, replicate) or
empty/slice_scatter chains (circular), which have no integer form."""
from __future__ import annotations

import numpy as np
import torch

from .. import meta
from .registry import PASSTHROUGH, OpDef, Source, op_arg

aten = torch.ops.aten

NUMPY_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
"""torch's padding mode → numpy's np.pad mode (TVM's relax.nn.pad takes torch's names)."""

FIXED_MODE = {aten.reflection_pad1d.default: "reflect", aten.reflection_pad2d.default: "reflect",
              aten.reflection_pad3d.default: "reflect", aten.replication_pad1d.default: "replicate",
              aten.replication_pad2d.default: "replicate", aten.replication_pad3d.default: "replicate"}
"""ATen's padding ops of one mode each (``aten.pad`` dispatches to them; a model may call them directly)."""


def widths(ndim: int, pad) -> list[list[int]]:
    """torch's pad list (last dimension first) as [before, after] per dimension."""
    out = [[0, 0] for _ in range(ndim)]
    for i in range(len(pad) // 2):
        out[ndim - 1 - i] = [int(pad[2 * i]), int(pad[2 * i + 1])]
    return out


def reference(x, pad, mode):
    """np.pad of ``x`` (after cropping the negative pads) in the numpy mode of ``mode``."""
    x = np.asarray(x)
    w = widths(x.ndim, pad)
    x = x[tuple(slice(max(-b, 0), x.shape[d] - max(-a, 0)) for d, (b, a) in enumerate(w))]
    return np.pad(x, [(max(b, 0), max(a, 0)) for b, a in w], mode=NUMPY_MODES[mode])


def mode_and_value(node) -> tuple[str, float]:
    """(mode, value) of an aten.pad node or a one-mode padding op."""
    if node.target in FIXED_MODE:
        return FIXED_MODE[node.target], 0.0
    value = op_arg(node, 3, "value", None)
    return op_arg(node, 2, "mode", "constant"), 0.0 if value is None else float(value)


def check(node) -> str:
    """'' if the padding has an integer form, else why not."""
    mode, value = mode_and_value(node)
    if mode == "constant":
        return "" if value == 0 else (f"constant padding by {value} has no integer form (only padding by 0 is exact: "
                                      f"by the zero point)")
    return "" if mode in NUMPY_MODES else f"padding mode {mode!r} has no integer form"


def on_integers(cv, node, x):
    """pad(DQ(x)) → constant_pad_nd of x's codes by its zero point, or qcompiler.pad. A pad
    with no integer form reaches here only when it is kept in float (an override or the
    scheme's fallback_ops): dequantize → the float pad → quantize on x's parameters."""
    mode, _ = mode_and_value(node)
    if check(node):
        f = cv.graph.call_function(node.target, (cv.float_of(node.args[0]), *node.args[1:]), dict(node.kwargs))
        f.meta[meta.FLOAT_FALLBACK] = True
        return cv.emit_for(node, torch.ops.qcompiler.quantize.default, (f, x.scale, x.zp, x.qmin, x.qmax, x.dtype))
    pad = [int(p) for p in node.args[1]]
    if mode == "constant":
        return cv.emit_for(node, aten.constant_pad_nd.default, (x.node, pad, x.zp))
    return cv.emit_for(node, OP.target, (x.node, pad, mode))


def lowering(ctx, node, args, kwargs):
    """Crop the negative pads (strided_slice), then relax.nn.pad in the same mode (TVM's
    reflect_pad / replicate_pad / circular_pad index maps)."""
    x, pad, mode = args
    x = ctx.expr(x)
    shape = ctx.shape(x)
    w = widths(len(shape), pad)
    if any(b < 0 or a < 0 for b, a in w):
        x = ctx.emit(ctx.R.strided_slice(x, axes=list(range(len(shape))), begin=[max(-b, 0) for b, _ in w],
                                         end=[shape[d] - max(-a, 0) for d, (_, a) in enumerate(w)]))
        w = [[max(b, 0), max(a, 0)] for b, a in w]
    if not any(b or a for b, a in w):
        return x
    return ctx.R.nn.pad(x, [v for pair in w for v in pair], pad_mode=mode)


OP = OpDef(
    name="pad", doc="reflect / replicate / circular padding of integer values (a gather of codes)",
    schema="(Tensor x, int[] pad, str mode) -> Tensor", reference=reference, out_dtype="input", lowering=lowering,
    sources={t: Source(PASSTHROUGH, check=check, on_integers=on_integers, keep_whole=True)
             for t in (aten.pad.default, *FIXED_MODE)},
)
