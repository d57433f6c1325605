"""Layout ops: ATen ops that run on integer values as they are (the values flow through
unchanged, so the output keeps the input's quantization parameters), plus the shape
arithmetic and tuple access an integer program holds. One row each: the ATen op, its numpy
reference, its Relax lowering, and whether it is a passthrough source of quantization."""
from __future__ import annotations

import operator
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .. import meta
from ..graph import node_label
from .convert import ConversionError
from .registry import PASSTHROUGH, OpDef, Source, op_arg, source_of

aten = torch.ops.aten
LONG_END = 2**62  # torch's "to the end" for slice


def _dims(x, dims):
    return tuple(d % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims]))


# ---------------------------------------------------------------- numpy references


def _slice(x, dim=0, start=None, end=None, step=1):
    index = [slice(None)] * x.ndim
    index[dim % x.ndim] = slice(start, None if end is not None and end >= LONG_END else end, step)
    return x[tuple(index)]


def _pad(x, pad, value=0):
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if any(a < 0 or b < 0 for a, b in widths):  # negative pads crop
        x = x[tuple(slice(max(-a, 0), x.shape[d] - max(-b, 0)) for d, (a, b) in enumerate(widths))]
        widths = [(max(a, 0), max(b, 0)) for a, b in widths]
    return np.pad(x, widths, constant_values=value)


def _flatten(x, start=0, end=-1):
    start, end = start % x.ndim, end % x.ndim
    return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])


def _expand(x, shape):
    return np.broadcast_to(x, [x.shape[i - (len(shape) - x.ndim)] if s == -1 else s for i, s in enumerate(shape)])


def _squeeze(x, dims=None):
    dims = range(x.ndim) if dims is None else _dims(x, dims)
    return np.squeeze(x, axis=tuple(d for d in dims if x.shape[d] == 1))


# ---------------------------------------------------------------- Relax lowerings


def _resolve_shape(in_shape: Sequence[int], shape: Sequence[Any]) -> list[int]:
    shape = [int(s) for s in shape]
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        shape[shape.index(-1)] = int(np.prod(in_shape)) // max(known, 1)
    return shape


def _lower_reshape(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = _resolve_shape(ctx.shape(x), args[1])
    return x if list(ctx.shape(x)) == shape else ctx.R.reshape(x, shape)


def _lower_permute(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    return ctx.R.permute_dims(x, [d % ctx.ndim(x) for d in args[1]])


def _lower_transpose(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    nd = ctx.ndim(x)
    axes = list(range(nd))
    a, b = args[1] % nd, args[2] % nd
    axes[a], axes[b] = axes[b], axes[a]
    return x if a == b else ctx.R.permute_dims(x, axes)


def _lower_t(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    return ctx.R.permute_dims(x, [1, 0]) if ctx.ndim(x) == 2 else x


def _lower_identity(ctx, node, args, kwargs):
    return ctx.expr(args[0])


def _lower_squeeze(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = ctx.shape(x)
    dims = args[1] if len(args) > 1 else list(range(len(shape)))
    dims = [d % len(shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    dims = [d for d in dims if shape[d] == 1]
    return ctx.R.squeeze(x, axis=dims) if dims else x


def _lower_unsqueeze(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    d = args[1]
    return ctx.R.expand_dims(x, d if d >= 0 else ctx.ndim(x) + 1 + d)


def _lower_flatten(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = list(ctx.shape(x))
    if not shape:
        return ctx.R.reshape(x, [1])
    start = (args[1] if len(args) > 1 else 0) % len(shape)
    end = (args[2] if len(args) > 2 else -1) % len(shape)
    new = shape[:start] + [int(np.prod(shape[start:end + 1]))] + shape[end + 1:]
    return x if new == shape else ctx.R.reshape(x, new)


def _lower_expand(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape, target = ctx.shape(x), list(args[1])
    lead = len(target) - len(shape)
    new = [shape[i - lead] if int(s) == -1 else int(s) for i, s in enumerate(target)]
    return x if new == list(shape) else ctx.R.broadcast_to(x, new)


def _lower_slice(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = ctx.shape(x)
    dim = (args[1] if len(args) > 1 else 0) % len(shape)
    start = args[2] if len(args) > 2 else None
    end = args[3] if len(args) > 3 else None
    step = args[4] if len(args) > 4 else 1
    if end is not None and end >= LONG_END:
        end = None
    begin, stop, step = slice(start, end, step).indices(shape[dim])
    if (begin, stop, step) == (0, shape[dim], 1):
        return x
    return ctx.R.strided_slice(x, axes=[dim], begin=[begin], end=[max(stop, begin)], strides=[step])


def _lower_select(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = ctx.shape(x)
    dim = args[1] % len(shape)
    index = args[2] % shape[dim]
    part = ctx.emit(ctx.R.strided_slice(x, axes=[dim], begin=[index], end=[index + 1]))
    return ctx.R.squeeze(part, axis=[dim])


def _lower_constant_pad_nd(ctx, node, args, kwargs):
    """Pad (negative pads crop), last dimension first as torch's pad list; value in the
    tensor's dtype."""
    x = ctx.expr(args[0])
    pad = list(args[1])
    value = args[2] if len(args) > 2 else kwargs.get("value", 0)
    shape = ctx.shape(x)
    nd = len(shape)
    widths = [[0, 0] for _ in range(nd)]
    for i in range(len(pad) // 2):
        widths[nd - 1 - i] = [int(pad[2 * i]), int(pad[2 * i + 1])]
    if any(b < 0 or a < 0 for b, a in widths):
        begin = [max(-b, 0) for b, _ in widths]
        end = [shape[d] - max(-a, 0) for d, (_, a) in enumerate(widths)]
        x = ctx.emit(ctx.R.strided_slice(x, axes=list(range(nd)), begin=begin, end=end))
        widths = [[max(b, 0), max(a, 0)] for b, a in widths]
    if not any(b or a for b, a in widths):
        return x
    flat = [v for pair in widths for v in pair]
    return ctx.R.nn.pad(x, flat, pad_mode="constant", pad_value=float(value))  # a float attribute, cast to x's dtype


def _lower_sym_size(ctx, node, args, kwargs):
    return ctx.shape(ctx.expr(args[0]))[args[1]]


def _lower_getitem(ctx, node, args, kwargs):
    value, index = args
    if isinstance(value, (list, tuple)):
        return value[index]
    if ctx.is_tuple(value):
        return ctx.tuple_get_item(value, index)
    if index == 0 and node.args[0].meta.get(meta.FLOAT_FALLBACK):
        return value  # tvm.relax.frontend.torch's translators of tuple-valued float ops compute output 0 alone
    raise ctx.error(f"{node_label(node)}: output {index} of {node_label(node.args[0])} has no Relax value "
                    f"(only a tuple-valued op's first output is computed when it runs in float)")


def _python_scalar(fn: Callable) -> Callable:
    def lower(ctx, node, args, kwargs):
        if any(ctx.is_expr(a) for a in args):
            raise ctx.error(f"{node_label(node)} is shape arithmetic on a tensor")
        return fn(*args)
    return lower


# ---------------------------------------------------------------- conversion on integers


def _pad_check(node) -> str:
    value = op_arg(node, 2, "value", 0.0)
    return "" if value == 0 else f"constant_pad_nd with value {value} (only zero padding is exact)"


def _pad_on_integers(cv, node, x):
    """Zero padding of real values is padding of the integers by the zero point."""
    return cv.emit_for(node, node.target, (x.node, node.args[1], x.zp))


def _getitem_on_integers(cv, node, x):
    """Output ``i`` of a tuple-valued op on integers: the integer node itself when the op
    computes only that output (``Source.integer_outputs``, e.g. a max pool's values), else
    ``getitem`` on its integer tuple (split)."""
    parent, index = node.args
    only = getattr(source_of(parent.target), "integer_outputs", None)
    if only is None:
        return cv.emit_for(node, node.target, (x.node, index))
    if index != only:
        raise ConversionError(f"{node_label(node)}: only output {only} of {node_label(parent)} has an integer form, "
                              f"not output {index}")
    return x.node


def _split_with_sizes(x, sizes, dim=0):
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=dim % x.ndim))


def _lower_split_with_sizes(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    dim = (args[2] if len(args) > 2 else 0) % ctx.ndim(x)
    return ctx.R.split(x, [int(i) for i in np.cumsum(args[1])[:-1]], axis=dim)


# ---------------------------------------------------------------- the rows


def layout_op(aten_op: Any, reference: Callable, lowering: Callable, passthrough: bool = True,
              check: Optional[Callable] = None, on_integers: Optional[Callable] = None) -> OpDef:
    """A row for an ATen op that runs on integer values as it is; ``passthrough``: it is a
    passthrough source of quantization (its output keeps its input's parameters)."""
    sources = {aten_op: Source(PASSTHROUGH, check=check, on_integers=on_integers)} if passthrough else {}
    name = str(aten_op) if isinstance(aten_op, torch._ops.OpOverload) else f"{aten_op.__module__}.{aten_op.__name__}"
    return OpDef(name=name, doc=f"{name} on integer values", aten=aten_op, reference=reference, lowering=lowering,
                 sources=sources)


OPS = [
    layout_op(aten.view.default, np.reshape, _lower_reshape),
    layout_op(aten.reshape.default, np.reshape, _lower_reshape),
    layout_op(aten._unsafe_view.default, np.reshape, _lower_reshape),
    layout_op(aten.permute.default, np.transpose, _lower_permute),
    layout_op(aten.transpose.int, np.swapaxes, _lower_transpose),
    layout_op(aten.t.default, np.transpose, _lower_t),
    layout_op(aten.clone.default, lambda x, **kw: x.copy(), _lower_identity),
    layout_op(aten.alias.default, lambda x: x, _lower_identity),
    layout_op(aten.contiguous.default, lambda x, **kw: x, _lower_identity, passthrough=False),
    layout_op(aten.squeeze.dim, _squeeze, _lower_squeeze),
    layout_op(aten.squeeze.dims, _squeeze, _lower_squeeze),
    layout_op(aten.squeeze.default, _squeeze, _lower_squeeze, passthrough=False),
    layout_op(aten.unsqueeze.default, lambda x, d: np.expand_dims(x, d if d >= 0 else x.ndim + 1 + d), _lower_unsqueeze),
    layout_op(aten.flatten.using_ints, _flatten, _lower_flatten),
    layout_op(aten.expand.default, _expand, _lower_expand),
    layout_op(aten.slice.Tensor, _slice, _lower_slice),
    layout_op(aten.select.int, lambda x, dim, index: np.take(x, index, axis=dim), _lower_select),
    layout_op(aten.constant_pad_nd.default, _pad, _lower_constant_pad_nd, check=_pad_check, on_integers=_pad_on_integers),
    layout_op(aten.sym_size.int, lambda x, d: x.shape[d], _lower_sym_size, passthrough=False),
    layout_op(aten.split_with_sizes.default, _split_with_sizes, _lower_split_with_sizes),
    layout_op(operator.getitem, lambda value, index: value[index], _lower_getitem, on_integers=_getitem_on_integers),
    *(layout_op(f, f, _python_scalar(f), passthrough=False)
      for f in (operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod, operator.neg)),
]
