"""Lowerings of the float ops an integer program keeps (scheme-allowed float fallbacks
between dequantize and quantize): ours (``FLOAT_LOWERINGS``), for ops whose float32 order of
operations must follow torch's (e.g. hardswish), and otherwise the translators of
``tvm.relax.frontend.torch`` (its ExportedProgramImporter's convert map).

Ops that IEEE float32 computes exactly (add, sub, mul, div, neg, abs, relu, clamp,
hardswish, hardsigmoid, leaky_relu, max, min) equal torch bit for bit; transcendental ops
and float reductions (exp, sigmoid, tanh, softmax, gelu, silu, mean, linear/conv in float)
can differ from torch's kernels in the last float32 bit, which changes the quantized result
by one step only for a value within one ulp of a rounding boundary."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from .relax_context import LowerContext

R = relax.op

__all__ = ["FLOAT_LOWERINGS", "frontend_lowering", "has_frontend_lowering"]


def _float_operands(ctx: LowerContext, a: Any, b: Any, true_divide: bool = False) -> tuple[relax.Expr, relax.Expr]:
    """Torch's promotion for the cases that occur: a tensor with a number takes the
    tensor's dtype (float32 if the number is a float and the tensor an integer one); two
    tensors of different dtypes, or a true division of integers, meet in float32."""
    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def is_float(v):
        return isinstance(v, float) or (isinstance(v, relax.Expr) and ctx.dtype(v).startswith(("float", "bfloat")))

    swap = is_number(a) and not is_number(b)
    t, n = (b, a) if swap else (a, b)
    t = ctx.expr(t)
    if is_number(n):
        if true_divide or (isinstance(n, float) and not is_float(t)):
            t = ctx.astype(t, "float32")
        n = ctx.expr(n, ctx.dtype(t))
    else:
        n = ctx.expr(n)
        if ctx.dtype(t) != ctx.dtype(n) or (true_divide and not is_float(t)):
            t, n = ctx.astype(t, "float32"), ctx.astype(n, "float32")
    return (n, t) if swap else (t, n)


def _float_binary(op: Callable, has_alpha: bool = False):
    def lower(ctx, node, args, kwargs):
        a, b = _float_operands(ctx, args[0], args[1], true_divide=op is R.divide)
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1) if has_alpha else 1
        if alpha != 1:
            b = ctx.emit(R.multiply(b, ctx.const(alpha, ctx.dtype(b))))
        return op(a, b)
    return lower


def _hardswish(ctx, node, args, kwargs):
    """x · min(max(x + 3, 0), 6) / 6, in torch's order (the frontend divides first)."""
    x = ctx.expr(args[0])
    dt = ctx.dtype(x)
    inner = ctx.emit(R.minimum(R.maximum(R.add(x, ctx.const(3.0, dt)), ctx.const(0.0, dt)), ctx.const(6.0, dt)))
    return R.divide(R.multiply(x, inner), ctx.const(6.0, dt))


def _hardsigmoid(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    dt = ctx.dtype(x)
    inner = ctx.emit(R.minimum(R.maximum(R.add(x, ctx.const(3.0, dt)), ctx.const(0.0, dt)), ctx.const(6.0, dt)))
    return R.divide(inner, ctx.const(6.0, dt))


def _leaky_relu(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    dt = ctx.dtype(x)
    return R.where(R.greater(x, ctx.const(0.0, dt)), x, R.multiply(x, ctx.const(slope, dt)))


def _clip(ctx, node, args, kwargs):
    """clamp/hardtanh/relu6 in float: min(max(x, lo), hi) (bounds may be None)."""
    x = ctx.expr(args[0])
    dt = ctx.dtype(x)
    name = str(node.target)
    if name.startswith("aten.hardtanh"):
        lo, hi = (args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)), (args[2] if len(args) > 2 else kwargs.get("max_val", 1.0))
    elif name.startswith("aten.relu6"):
        lo, hi = 0.0, 6.0
    elif name.startswith("aten.clamp_min"):
        lo, hi = args[1], None
    elif name.startswith("aten.clamp_max"):
        lo, hi = None, args[1]
    else:
        lo, hi = (args[1] if len(args) > 1 else kwargs.get("min")), (args[2] if len(args) > 2 else kwargs.get("max"))
    if lo is not None:
        x = ctx.emit(R.maximum(x, ctx.expr(lo, dt)))
    if hi is not None:
        x = ctx.emit(R.minimum(x, ctx.expr(hi, dt)))
    return x


FLOAT_LOWERINGS: dict[str, Callable] = {
    "aten.add.Tensor": _float_binary(R.add, has_alpha=True),
    "aten.sub.Tensor": _float_binary(R.subtract, has_alpha=True),
    "aten.mul.Tensor": _float_binary(R.multiply),
    "aten.div.Tensor": _float_binary(R.divide),
    "aten.maximum.default": _float_binary(R.maximum),
    "aten.minimum.default": _float_binary(R.minimum),
    "aten.neg.default": lambda ctx, node, args, kwargs: R.negative(ctx.expr(args[0])),
    "aten.abs.default": lambda ctx, node, args, kwargs: R.abs(ctx.expr(args[0])),
    "aten.relu.default": lambda ctx, node, args, kwargs: R.maximum(ctx.expr(args[0]), ctx.const(0, ctx.dtype(ctx.expr(args[0])))),
    "aten.sigmoid.default": lambda ctx, node, args, kwargs: R.sigmoid(ctx.expr(args[0])),
    "aten.tanh.default": lambda ctx, node, args, kwargs: R.tanh(ctx.expr(args[0])),
    "aten.exp.default": lambda ctx, node, args, kwargs: R.exp(ctx.expr(args[0])),
    "aten.hardswish.default": _hardswish,
    "aten.hardsigmoid.default": _hardsigmoid,
    "aten.leaky_relu.default": _leaky_relu,
    "aten.hardtanh.default": _clip,
    "aten.relu6.default": _clip,
    "aten.clamp.default": _clip,
    "aten.clamp_min.default": _clip,
    "aten.clamp_max.default": _clip,
}


def frontend_lowering(ctx: LowerContext, node: fx.Node, args, kwargs):
    """A float op through tvm.relax.frontend.torch's translator for it (its env filled with
    the Relax values of the node's inputs)."""
    importer = getattr(ctx, "_importer", None)
    if importer is None:
        importer = ctx._importer = _importer_class()()
    importer.block_builder = ctx.bb
    for n in node.all_input_nodes:
        value = ctx.env[n]
        importer.env[n] = ctx.expr(value) if isinstance(value, (np.ndarray, torch.Tensor)) else value
    return importer.convert_map[node.target.__name__](node)


_FRONTEND: Optional[dict] = None


def _importer_class() -> type:
    """tvm.relax.frontend.torch's ExportedProgramImporter, imported when first needed (the
    import takes seconds, and most programs have no float op)."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    return ExportedProgramImporter


def _frontend_map() -> dict:
    """The convert map of tvm.relax.frontend.torch's ExportedProgramImporter (built once,
    used only to know which ops it has)."""
    global _FRONTEND
    if _FRONTEND is None:
        _FRONTEND = _importer_class()().convert_map
    return _FRONTEND


def has_frontend_lowering(node: fx.Node) -> bool:
    """Whether tvm.relax.frontend.torch translates this ATen node."""
    return isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "aten" \
        and node.target.__name__ in _frontend_map()
