"""Lower an integer program (qcompiler's fx GraphModule of integer ops) to a TVM Relax
IRModule, one lowering per op, each computing exactly what ``qcompiler/kernels.py`` does
(docs/semantics.md).

    mod = lower(qm.program, example_inputs)       # tvm.IRModule with a Relax function "main"

``main`` takes the program's placeholders in order (static shapes and dtypes taken from the
example inputs) and returns a Relax tuple of the program's outputs, flattened in pytree
order (``output_leaves``), always a tuple, even for one output.

The lowerings are one table, ``LOWERINGS``, keyed by op: a qcompiler op's short name
("conv2d", "requantize", ...), or an ATen overload's name ("aten.view.default"). Each is a
function ``fn(ctx, node, args, kwargs) -> relax.Expr`` (or a tuple of them, or a Python
value for shape arithmetic such as ``sym_size``), where ``args``/``kwargs`` are the node's
arguments with every input node replaced by its value: a Relax expression for tensors, a
numpy array for get_attr constants (``ctx.expr(a)`` turns either into a Relax expression),
a Python number otherwise. ``register_lowering(op, fn)`` adds or replaces one.

Integer arithmetic. Every rescale is done in int64 exactly as ``fixed_point.requantize``:
``clamp(z + ((acc·m + 2^(S−1)) >> S), lo, hi)``. conv2d/linear/matmul center their inputs
(``q − z``, int16 when it fits) and accumulate with ``relax.op.nn.conv2d`` /
``relax.op.matmul`` into int32 when the worst-case sum provably fits (checked here from
the dtype range and the weights), int64 otherwise; then bias and requantize in int64. They
are emitted as standard Relax ops (conv2d → astype → add → multiply → add → right_shift →
add → maximum → minimum → astype), so the default pipeline's LegalizeOps + FuseOps +
FuseTIR make one primfunc per conv/linear/matmul + requantize epilogue, which a later
schedule pass can find.

Float fallback ops (scheme-allowed float ops between dequantize and quantize) are lowered
through ``FLOAT_LOWERINGS`` (ours, for ops whose float32 order of operations must follow
torch's, e.g. hardswish) and otherwise through the translators of
``tvm.relax.frontend.torch`` (its ExportedProgramImporter's convert map). Ops that IEEE
float32 computes exactly (add, sub, mul, div, neg, abs, relu, clamp, hardswish,
hardsigmoid, leaky_relu, max, min) equal torch bit for bit; transcendental ops and float
reductions (exp, sigmoid, tanh, softmax, gelu, silu, mean, linear/conv in float) can
differ from torch's kernels in the last float32 bit, which changes the quantized result by
one step only for a value within one ulp of a rounding boundary.

Shapes are static (taken from the example inputs); ``sym_size`` folds to the example's
size. A program node with no lowering is a ``LoweringError`` that lists every such node at
once.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from qcompiler.errors import QCompilerError
from qcompiler.graph import get_tensor, node_label
from qcompiler.integer_ops import OPS, TORCH_TO_NUMPY, op_of

R = relax.op
aten = torch.ops.aten

__all__ = ["lower", "register_lowering", "lowering_for", "missing_lowerings", "LoweringError", "LowerContext",
           "LOWERINGS", "FLOAT_LOWERINGS", "output_leaves", "op_key"]

Lowering = Callable[["LowerContext", fx.Node, tuple, dict], Any]

INT32_LIMIT = 2**31


class LoweringError(QCompilerError):
    """An integer program could not be lowered to TVM Relax (ops with no lowering, or a
    lowering that failed; the TVM error is chained beneath)."""


# ---------------------------------------------------------------- the registry


def op_key(op: Any) -> str:
    """The table key of an op: a qcompiler op's short name ("conv2d"), an ATen overload's
    name ("aten.view.default"), or "module.name" for a Python function (operator.getitem
    → "_operator.getitem")."""
    if isinstance(op, str):
        return op
    if isinstance(op, torch._ops.OpOverload):
        return op_of(op) or str(op)
    if isinstance(op, torch._ops.OpOverloadPacket):
        raise TypeError(f"register a lowering for one overload of {op}, e.g. {op}.default")
    if callable(op):
        return f"{getattr(op, '__module__', '')}.{getattr(op, '__name__', repr(op))}"
    raise TypeError(f"not an op: {op!r}")


LOWERINGS: dict[str, Lowering] = {}
"""op key -> lowering, for every op of an integer program (integer ops, layout ops, float
fallback ops with our own form, shape arithmetic). ``register_lowering`` writes here."""

FLOAT_LOWERINGS: dict[str, Lowering] = {}
"""Float fallback ops lowered by us (the rest go to tvm.relax.frontend.torch)."""


def register_lowering(op: Any, fn: Optional[Lowering] = None):
    """Register ``fn(ctx, node, args, kwargs) -> relax.Expr`` as the lowering of ``op`` (a
    qcompiler op name, an ATen OpOverload such as ``torch.ops.aten.cumsum.default``, or its
    name "aten.cumsum.default"); replaces any existing lowering. Usable as a decorator:
    ``@register_lowering(torch.ops.aten.cumsum.default)``."""
    key = op_key(op)

    def register(f: Lowering) -> Lowering:
        LOWERINGS[key] = f
        return f

    return register(fn) if fn is not None else register


_FRONTEND = None


def _frontend_map() -> dict:
    """The convert map of tvm.relax.frontend.torch's ExportedProgramImporter (built once,
    used only to know which ops it has)."""
    global _FRONTEND
    if _FRONTEND is None:
        from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

        _FRONTEND = ExportedProgramImporter().convert_map
    return _FRONTEND


def lowering_for(node: fx.Node, target_lowerings: Optional[dict] = None) -> Optional[Lowering]:
    """The lowering of a call_function node, or None. ``target_lowerings`` (a target's own
    table, keyed like LOWERINGS) comes first."""
    key = op_key(node.target)
    if target_lowerings and key in target_lowerings:
        return target_lowerings[key]
    if key in LOWERINGS:
        return LOWERINGS[key]
    if key in FLOAT_LOWERINGS:
        return FLOAT_LOWERINGS[key]
    if isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "aten" \
            and node.target.__name__ in _frontend_map():
        return _frontend_lowering
    return None


def missing_lowerings(program: fx.GraphModule) -> list[fx.Node]:
    """Every call_function node of ``program`` that has no lowering."""
    return [n for n in program.graph.nodes if n.op == "call_function" and lowering_for(n) is None]


def _missing_error(nodes: list[fx.Node]) -> LoweringError:
    lines = "\n".join(f"  - {node_label(n)}" for n in nodes)
    ops = sorted({op_key(n.target) for n in nodes})
    return LoweringError(
        f"{len(nodes)} node(s) of the integer program have no lowering to TVM Relax:\n{lines}\n"
        f"Register one per op with qcompiler.targets.lower.register_lowering(op, fn), where "
        f"fn(ctx, node, args, kwargs) returns a relax expression (ops: {', '.join(ops)}); "
        f"or quantize the model so that these ops have an integer form."
    )


# ---------------------------------------------------------------- the context


class LowerContext:
    """What a lowering sees: the BlockBuilder, the program, the value of every node so far,
    and helpers for the integer arithmetic of docs/semantics.md."""

    def __init__(self, program: fx.GraphModule, bb: relax.BlockBuilder):
        self.program = program
        self.bb = bb
        self.env: dict[fx.Node, Any] = {}

    # values -------------------------------------------------------------
    def emit(self, expr: Any, name: str = "") -> Any:
        if isinstance(expr, relax.Var) or not isinstance(expr, relax.Expr):
            return expr
        return self.bb.emit(expr, name)

    @staticmethod
    def const(value: Any, dtype: str) -> relax.Constant:
        """A Relax constant of exactly ``dtype`` (relax.const alone narrows int64 to int32)."""
        return relax.const(np.ascontiguousarray(np.asarray(value).astype(dtype)), dtype)

    def expr(self, value: Any, dtype: Optional[str] = None) -> relax.Expr:
        """``value`` as a Relax expression: an expression as it is, a tensor/array as a
        constant (of its own dtype, or ``dtype``), a Python number as a scalar constant."""
        if isinstance(value, relax.Expr):
            return value
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray) or isinstance(value, np.generic):
            return self.const(value, dtype or str(np.asarray(value).dtype))
        if isinstance(value, bool):
            return self.const(value, dtype or "bool")
        if isinstance(value, int):
            return self.const(value, dtype or "int64")
        if isinstance(value, float):
            return self.const(value, dtype or "float32")
        raise LoweringError(f"cannot make a Relax value of {value!r}")

    @staticmethod
    def shape(expr: relax.Expr) -> tuple[int, ...]:
        ty = expr.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise LoweringError(f"{expr} has no static tensor shape")
        try:
            return tuple(int(s) for s in ty.shape)
        except TypeError as exc:
            raise LoweringError(f"{expr} has a symbolic shape {ty.shape}; only static shapes are lowered") from exc

    @staticmethod
    def dtype(expr: relax.Expr) -> str:
        return str(expr.ty.dtype.dtype)

    def ndim(self, expr: relax.Expr) -> int:
        return len(self.shape(expr))

    def astype(self, x: relax.Expr, dtype: str) -> relax.Expr:
        return x if self.dtype(x) == dtype else self.emit(R.astype(x, dtype))

    # integer arithmetic ---------------------------------------------------
    def centered(self, x: relax.Expr, zp: int, dtype: Optional[str] = None) -> relax.Expr:
        """x − zp, widened to ``dtype`` (default: the narrowest of int16/int32/int64 that
        holds every value of x's dtype minus zp)."""
        if dtype is None:
            lo, hi = _dtype_range(self.dtype(x))
            dtype = _int_dtype_for(min(lo - zp, hi - zp), max(lo - zp, hi - zp))
        x = self.astype(x, dtype)
        if zp == 0:
            return x
        return self.emit(R.subtract(x, self.const(zp, dtype)))

    def channel_const(self, value: Any, ndim: int, axis: int, dtype: str = "int64") -> relax.Expr:
        """A per-channel parameter as a constant broadcasting along ``axis`` of an
        ``ndim``-d tensor (a scalar if it has one element), as kernels._channel_shape."""
        arr = np.asarray(value).astype(dtype)
        if arr.size == 1:
            return self.const(arr.reshape(()), dtype)
        shape = [1] * ndim
        shape[axis % ndim] = -1
        return self.const(arr.reshape(shape), dtype)

    def rescale(self, acc: relax.Expr, shift: Any, ndim: int = 0, axis: int = 1) -> relax.Expr:
        """(acc + 2^(S−1)) >> S on int64 ``acc`` (S = 0 leaves acc): fixed_point.rounding_shift."""
        s = np.asarray(shift, dtype=np.int64)
        if s.size == 1 and int(s.reshape(())) == 0:
            return acc
        half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0).astype(np.int64)
        acc = self.emit(R.add(acc, self.channel_const(half, ndim, axis)))
        return self.emit(R.right_shift(acc, self.channel_const(s, ndim, axis)))

    def clamp(self, x: relax.Expr, lo: Any, hi: Any, ndim: int = 0, axis: int = 1) -> relax.Expr:
        x = self.emit(R.maximum(x, self.channel_const(lo, ndim, axis, self.dtype(x))))
        return self.emit(R.minimum(x, self.channel_const(hi, ndim, axis, self.dtype(x))))

    def requantize(self, acc: relax.Expr, mult: Any, shift: Any, out_zp: int, lo: Any, hi: Any, out_dtype: Any,
                   axis: int = 1) -> relax.Expr:
        """clamp(z + ((acc·m + 2^(S−1)) >> S), lo, hi) in int64, cast to ``out_dtype``
        (fixed_point.requantize; m, S, lo, hi per channel along ``axis`` or scalars)."""
        acc = self.astype(acc, "int64")
        nd = self.ndim(acc)
        acc = self.emit(R.multiply(acc, self.channel_const(mult, nd, axis)))
        acc = self.rescale(acc, shift, nd, axis)
        if out_zp != 0:
            acc = self.emit(R.add(acc, self.const(out_zp, "int64")))
        acc = self.clamp(acc, lo, hi, nd, axis)
        return self.astype(acc, _np_dtype(out_dtype))


def _np_dtype(dtype: Any) -> str:
    if isinstance(dtype, torch.dtype):
        return str(np.dtype(TORCH_TO_NUMPY[dtype]))
    return str(np.dtype(dtype))


def _dtype_range(dtype: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def _int_dtype_for(lo: int, hi: int) -> str:
    for dtype in ("int16", "int32", "int64"):
        a, b = _dtype_range(dtype)
        if a <= lo and hi <= b:
            return dtype
    raise LoweringError(f"no integer dtype holds [{lo}, {hi}]")


def _max_abs(x: relax.Expr, ctx: LowerContext, zp: int = 0) -> int:
    lo, hi = _dtype_range(ctx.dtype(x))
    return max(abs(lo - zp), abs(hi - zp))


def _acc_dtype(bound: int) -> str:
    """int32 when every partial sum provably fits (|Σ| ≤ bound < 2^31), else int64."""
    return "int32" if bound < INT32_LIMIT else "int64"


def _lower_all(values: Any, fn: Callable) -> Any:
    if isinstance(values, (list, tuple)):
        return type(values)(_lower_all(v, fn) for v in values)
    return fn(values)


# ---------------------------------------------------------------- integer ops


def _quantize(ctx: LowerContext, node, args, kwargs):
    """clamp(round_half_even(x · f32(1/s)) + f32(z), qmin, qmax) in float32, then cast."""
    x, scale, zp, qmin, qmax, dtype = args
    x = ctx.astype(ctx.expr(x), "float32")
    y = ctx.emit(R.round(R.multiply(x, ctx.const(np.float32(1.0 / scale), "float32"))))  # R.round is half to even
    y = ctx.emit(R.add(y, ctx.const(np.float32(zp), "float32")))
    y = ctx.emit(R.minimum(R.maximum(y, ctx.const(qmin, "float32")), ctx.const(qmax, "float32")))
    return R.astype(y, _np_dtype(dtype))


def _dequantize(ctx: LowerContext, node, args, kwargs):
    """(f32(q) − f32(z)) · f32(s)."""
    q, scale, zp = args
    x = ctx.astype(ctx.expr(q), "float32")
    x = ctx.emit(R.subtract(x, ctx.const(np.float32(zp), "float32")))
    return R.multiply(x, ctx.const(np.float32(scale), "float32"))


def _conv2d(ctx: LowerContext, node, args, kwargs):
    x, w, bias, x_zp, stride, padding, dilation, groups, mult, shift, out_zp, lo, hi, out_dtype = args
    x = ctx.expr(x)
    w = np.asarray(w)
    o, cg, kh, kw = w.shape
    xc = ctx.centered(x, x_zp)  # zero padding of x − z_x: padding x with z_x
    bound = _max_abs(x, ctx, x_zp) * int(np.abs(w.astype(np.int64)).max(initial=0)) * cg * kh * kw
    acc = ctx.emit(R.nn.conv2d(xc, ctx.const(w, str(w.dtype)), strides=list(stride),
                               padding=[padding[0], padding[1], padding[0], padding[1]], dilation=list(dilation),
                               groups=int(groups), out_dtype=_acc_dtype(bound)))
    acc = ctx.astype(acc, "int64")
    acc = ctx.emit(R.add(acc, ctx.channel_const(bias, 4, 1)))
    return ctx.requantize(acc, mult, shift, out_zp, lo, hi, out_dtype, axis=1)


def _linear(ctx: LowerContext, node, args, kwargs):
    x, w, bias, x_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    x = ctx.expr(x)
    w = np.asarray(w)
    xc = ctx.centered(x, x_zp)
    bound = _max_abs(x, ctx, x_zp) * int(np.abs(w.astype(np.int64)).max(initial=0)) * w.shape[1]
    wt = ctx.const(np.ascontiguousarray(w.T).astype(ctx.dtype(xc)), ctx.dtype(xc))  # [K, O], same dtype as xc
    acc = ctx.emit(R.matmul(xc, wt, out_dtype=_acc_dtype(bound)))
    acc = ctx.astype(acc, "int64")
    nd = ctx.ndim(acc)
    acc = ctx.emit(R.add(acc, ctx.channel_const(bias, nd, nd - 1)))
    return ctx.requantize(acc, mult, shift, out_zp, lo, hi, out_dtype, axis=nd - 1)


def _matmul(ctx: LowerContext, node, args, kwargs):
    a, b, a_zp, b_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    a, b = ctx.expr(a), ctx.expr(b)
    k = ctx.shape(a)[-1]
    ma, mb = _max_abs(a, ctx, a_zp), _max_abs(b, ctx, b_zp)
    dtype = _int_dtype_for(-max(ma, mb), max(ma, mb))
    ac, bc = ctx.centered(a, a_zp, dtype), ctx.centered(b, b_zp, dtype)
    acc = ctx.emit(R.matmul(ac, bc, out_dtype=_acc_dtype(ma * mb * k)))
    return ctx.requantize(acc, mult, shift, out_zp, lo, hi, out_dtype)


def _add(ctx: LowerContext, node, args, kwargs):
    """clamp(z + (((a − z_a)·m_a + (b − z_b)·m_b + 2^(S−1)) >> S), lo, hi): one rounding."""
    a, b, a_zp, b_zp, a_mult, b_mult, shift, out_zp, lo, hi, out_dtype = args
    acc = ctx.emit(R.multiply(ctx.centered(ctx.expr(a), a_zp, "int64"), ctx.const(a_mult, "int64")))
    if b_mult != 0:  # (b − z_b)·0 adds nothing (a scale-by-number node passes m_b = 0)
        bterm = ctx.emit(R.multiply(ctx.centered(ctx.expr(b), b_zp, "int64"), ctx.const(b_mult, "int64")))
        acc = ctx.emit(R.add(acc, bterm))
    elif ctx.shape(ctx.expr(b)) != ctx.shape(acc):  # keep numpy's broadcast shape
        acc = ctx.emit(R.add(acc, R.multiply(ctx.centered(ctx.expr(b), b_zp, "int64"), ctx.const(0, "int64"))))
    acc = ctx.rescale(acc, shift)
    if out_zp != 0:
        acc = ctx.emit(R.add(acc, ctx.const(out_zp, "int64")))
    return ctx.astype(ctx.clamp(acc, lo, hi), _np_dtype(out_dtype))


def _mul(ctx: LowerContext, node, args, kwargs):
    a, b, a_zp, b_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    acc = ctx.emit(R.multiply(ctx.centered(ctx.expr(a), a_zp, "int64"), ctx.centered(ctx.expr(b), b_zp, "int64")))
    return ctx.requantize(acc, mult, shift, out_zp, lo, hi, out_dtype)


def _concat(ctx: LowerContext, node, args, kwargs):
    xs, dim, zps, mults, shifts, out_zp, lo, hi, out_dtype = args
    parts = [ctx.requantize(ctx.centered(ctx.expr(x), z, "int64"), m, s, out_zp, lo, hi, out_dtype)
             for x, z, m, s in zip(xs, zps, mults, shifts)]
    nd = ctx.ndim(parts[0])
    return R.concat([ctx.emit(p) for p in parts], axis=dim % nd)


def _mean(ctx: LowerContext, node, args, kwargs):
    x, dims, keepdim, in_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    xc = ctx.centered(ctx.expr(x), in_zp, "int64")
    nd = ctx.ndim(xc)
    total = ctx.emit(R.sum(xc, axis=[d % nd for d in dims], keepdims=bool(keepdim)))
    return ctx.requantize(total, mult, shift, out_zp, lo, hi, out_dtype)


def _avg_pool2d(ctx: LowerContext, node, args, kwargs):
    """Window sums of x − z (zero padding counted) as a depthwise conv with a kernel of
    ones (exact in int32 when it fits), then requantize."""
    x, kernel, stride, padding, in_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    x = ctx.expr(x)
    c = ctx.shape(x)[1]
    (kh, kw), (ph, pw) = kernel, padding
    xc = ctx.centered(x, in_zp)
    ones = ctx.const(np.ones((c, 1, kh, kw)), "int8")
    total = ctx.emit(R.nn.conv2d(xc, ones, strides=list(stride), padding=[ph, pw, ph, pw], groups=c,
                                 out_dtype=_acc_dtype(_max_abs(x, ctx, in_zp) * kh * kw)))
    return ctx.requantize(total, mult, shift, out_zp, lo, hi, out_dtype)


def _max_pool2d(ctx: LowerContext, node, args, kwargs):
    """Max over windows. TOPI pads with the dtype's minimum, which is ≤ qmin: like qmin − 1,
    it never wins over a window's valid values (every window holds one)."""
    x, kernel, stride, padding, dilation, qmin = args
    x = ctx.expr(x)
    (ph, pw) = padding
    return R.nn.max_pool2d(x, pool_size=list(kernel), strides=list(stride), padding=[ph, pw, ph, pw],
                           dilation=list(dilation), ceil_mode=False)


def _clamp(ctx: LowerContext, node, args, kwargs):
    x, lo, hi, axis = args
    x = ctx.expr(x)
    dtype = ctx.dtype(x)
    nd = ctx.ndim(x)
    y = ctx.clamp(ctx.astype(x, "int64"), lo, hi, nd, axis)
    return ctx.astype(y, dtype)


def _requantize(ctx: LowerContext, node, args, kwargs):
    x, in_zp, mult, shift, out_zp, lo, hi, out_dtype = args
    return ctx.requantize(ctx.centered(ctx.expr(x), in_zp, "int64"), mult, shift, out_zp, lo, hi, out_dtype)


def _lut(ctx: LowerContext, node, args, kwargs):
    """T[q − qmin]: a gather from the table."""
    x, table, qmin = args
    x = ctx.expr(x)
    table = np.asarray(table)
    index = ctx.centered(x, qmin, "int32")
    # every index is in range (q in [qmin, qmax]); "clip" only keeps an out-of-range one from reading outside the table
    return R.take(ctx.const(table, str(table.dtype)), index, axis=0, mode="clip")


INTEGER_LOWERINGS: dict[str, Lowering] = {
    "quantize": _quantize,
    "dequantize": _dequantize,
    "conv2d": _conv2d,
    "linear": _linear,
    "add": _add,
    "mul": _mul,
    "matmul": _matmul,
    "concat": _concat,
    "mean": _mean,
    "avg_pool2d": _avg_pool2d,
    "max_pool2d": _max_pool2d,
    "clamp": _clamp,
    "requantize": _requantize,
    "lut": _lut,
}
assert set(INTEGER_LOWERINGS) == set(OPS), f"integer ops without a lowering: {set(OPS) - set(INTEGER_LOWERINGS)}"


# ---------------------------------------------------------------- layout ops (any dtype)


def _resolve_shape(in_shape: Sequence[int], shape: Sequence[Any]) -> list[int]:
    shape = [int(s) for s in shape]
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        shape[shape.index(-1)] = int(np.prod(in_shape)) // max(known, 1)
    return shape


def _reshape(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = _resolve_shape(ctx.shape(x), args[1])
    return x if list(ctx.shape(x)) == shape else R.reshape(x, shape)


def _permute(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    nd = ctx.ndim(x)
    return R.permute_dims(x, [d % nd for d in args[1]])


def _transpose(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    nd = ctx.ndim(x)
    axes = list(range(nd))
    a, b = args[1] % nd, args[2] % nd
    axes[a], axes[b] = axes[b], axes[a]
    return x if a == b else R.permute_dims(x, axes)


def _t(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    return R.permute_dims(x, [1, 0]) if ctx.ndim(x) == 2 else x


def _identity(ctx, node, args, kwargs):
    return ctx.expr(args[0])


def _squeeze(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = ctx.shape(x)
    dims = args[1] if len(args) > 1 else list(range(len(shape)))
    dims = [d % len(shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    dims = [d for d in dims if shape[d] == 1]
    return R.squeeze(x, axis=dims) if dims else x


def _unsqueeze(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    d = args[1]
    return R.expand_dims(x, d if d >= 0 else ctx.ndim(x) + 1 + d)


def _flatten(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = list(ctx.shape(x))
    if not shape:
        return R.reshape(x, [1])
    start = (args[1] if len(args) > 1 else 0) % len(shape)
    end = (args[2] if len(args) > 2 else -1) % len(shape)
    new = shape[:start] + [int(np.prod(shape[start:end + 1]))] + shape[end + 1:]
    return x if new == shape else R.reshape(x, new)


def _expand(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape, target = ctx.shape(x), list(args[1])
    lead = len(target) - len(shape)
    new = [shape[i - lead] if int(s) == -1 else int(s) for i, s in enumerate(target)]
    return x if new == list(shape) else R.broadcast_to(x, new)


def _slice(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = ctx.shape(x)
    dim = (args[1] if len(args) > 1 else 0) % len(shape)
    start = args[2] if len(args) > 2 else None
    end = args[3] if len(args) > 3 else None
    step = args[4] if len(args) > 4 else 1
    if end is not None and end >= 2**62:
        end = None
    begin, stop, step = slice(start, end, step).indices(shape[dim])
    if (begin, stop, step) == (0, shape[dim], 1):
        return x
    stop = max(stop, begin)
    return R.strided_slice(x, axes=[dim], begin=[begin], end=[stop], strides=[step])


def _select(ctx, node, args, kwargs):
    x = ctx.expr(args[0])
    shape = ctx.shape(x)
    dim = args[1] % len(shape)
    index = args[2] % shape[dim]
    part = ctx.emit(R.strided_slice(x, axes=[dim], begin=[index], end=[index + 1]))
    return R.squeeze(part, axis=[dim])


def _constant_pad_nd(ctx, node, args, kwargs):
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
    crop = any(b < 0 or a < 0 for b, a in widths)
    if crop:
        begin = [max(-b, 0) for b, _ in widths]
        end = [shape[d] - max(-a, 0) for d, (_, a) in enumerate(widths)]
        x = ctx.emit(R.strided_slice(x, axes=list(range(nd)), begin=begin, end=end))
        widths = [[max(b, 0), max(a, 0)] for b, a in widths]
    if not any(b or a for b, a in widths):
        return x
    flat = [v for pair in widths for v in pair]
    return R.nn.pad(x, flat, pad_mode="constant", pad_value=float(value))  # a float attribute, cast to x's dtype


def _sym_size(ctx, node, args, kwargs):
    return ctx.shape(ctx.expr(args[0]))[args[1]]


def _getitem(ctx, node, args, kwargs):
    value, index = args
    if isinstance(value, (list, tuple)):
        return value[index]
    if isinstance(value, relax.Expr) and isinstance(value.ty, relax.TupleType):
        return relax.TupleGetItem(value, index)
    raise LoweringError(f"getitem on {value!r}")


def _python_scalar(fn):
    def lower(ctx, node, args, kwargs):
        if any(isinstance(a, relax.Expr) for a in args):
            raise LoweringError(f"{node_label(node)} is shape arithmetic on a tensor")
        return fn(*args)
    return lower


LAYOUT_LOWERINGS: dict[str, Lowering] = {
    "aten.view.default": _reshape,
    "aten.reshape.default": _reshape,
    "aten._unsafe_view.default": _reshape,
    "aten.permute.default": _permute,
    "aten.transpose.int": _transpose,
    "aten.t.default": _t,
    "aten.clone.default": _identity,
    "aten.alias.default": _identity,
    "aten.contiguous.default": _identity,
    "aten.squeeze.dim": _squeeze,
    "aten.squeeze.dims": _squeeze,
    "aten.squeeze.default": _squeeze,
    "aten.unsqueeze.default": _unsqueeze,
    "aten.flatten.using_ints": _flatten,
    "aten.expand.default": _expand,
    "aten.slice.Tensor": _slice,
    "aten.select.int": _select,
    "aten.constant_pad_nd.default": _constant_pad_nd,
    "aten.sym_size.int": _sym_size,
    op_key(operator.getitem): _getitem,
    **{op_key(f): _python_scalar(f) for f in (operator.add, operator.sub, operator.mul, operator.floordiv,
                                               operator.truediv, operator.mod, operator.neg)},
}


# ---------------------------------------------------------------- float fallback ops


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
    name = op_key(node.target)
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


FLOAT_LOWERINGS.update({
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
})


def _frontend_lowering(ctx: LowerContext, node: fx.Node, args, kwargs):
    """A float op through tvm.relax.frontend.torch's translator for it (its env filled with
    the Relax values of the node's inputs)."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    importer = getattr(ctx, "_importer", None)
    if importer is None:
        importer = ctx._importer = ExportedProgramImporter()
    importer.block_builder = ctx.bb
    for n in node.all_input_nodes:
        value = ctx.env[n]
        importer.env[n] = ctx.expr(value) if isinstance(value, (np.ndarray, torch.Tensor)) else value
    return importer.convert_map[node.target.__name__](node)


# ---------------------------------------------------------------- the table

LOWERINGS.update(INTEGER_LOWERINGS)
LOWERINGS.update(LAYOUT_LOWERINGS)


# ---------------------------------------------------------------- lower


def output_leaves(value: Any) -> list:
    """The leaves of a program's output structure, in pytree order (how ``main`` returns them)."""
    from torch.utils._pytree import tree_leaves

    return tree_leaves(value, is_leaf=lambda v: isinstance(v, (fx.Node, relax.Expr)))


def _input_type(example: Any) -> relax.TensorType:
    if isinstance(example, relax.TensorType):
        return example
    if isinstance(example, torch.Tensor):
        return relax.TensorType(tuple(example.shape), _np_dtype(example.dtype))
    if isinstance(example, np.ndarray):
        return relax.TensorType(example.shape, str(example.dtype))
    if isinstance(example, (list, tuple)) and all(isinstance(s, int) for s in example):
        return relax.TensorType(tuple(example), "float32")
    raise LoweringError(f"an example input must be a tensor, an array or a shape (a tuple of ints), got {example!r}")


def lower(program: fx.GraphModule, example_inputs: Any, name: str = "main",
          target_lowerings: Optional[dict] = None, into: Optional[tvm.IRModule] = None) -> tvm.IRModule:
    """Lower ``program`` (an integer program, ``QuantizedModel.program``) to a Relax
    IRModule whose function ``name`` takes the program's placeholders (shapes and dtypes
    of ``example_inputs``: tensors, arrays, or shapes meaning float32) and returns the
    tuple of the program's output leaves. ``target_lowerings``: a target's own lowerings
    (e.g. scheduled kernels), used before the generic ones. ``into``: a module to add the
    function to (several programs in one build; kernels get names unique in it), returned
    with it. Raises LoweringError listing
    every node with no lowering; static shapes only."""
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    if len(example_inputs) != len(placeholders):
        raise LoweringError(f"the program takes {len(placeholders)} input(s), got {len(example_inputs)} example input(s)")
    missing = missing_lowerings(program)
    if missing:
        raise _missing_error(missing)

    if into is not None and name in [gv.name_hint for gv in into.functions]:
        raise LoweringError(f"the module already has a function {name!r}")
    bb = relax.BlockBuilder(into)
    ctx = LowerContext(program, bb)
    params = [relax.Var(p.name, _input_type(e)) for p, e in zip(placeholders, example_inputs)]

    def arg(a):
        if isinstance(a, fx.Node):
            return ctx.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(arg(v) for v in a)
        if isinstance(a, dict):
            return {k: arg(v) for k, v in a.items()}
        return a

    with bb.function(name, params):
        with bb.dataflow():
            outputs = None
            for node in program.graph.nodes:
                if node.op == "placeholder":
                    ctx.env[node] = params[placeholders.index(node)]
                elif node.op == "get_attr":
                    ctx.env[node] = get_tensor(program, node).detach().cpu().numpy()
                elif node.op == "call_function":
                    try:
                        value = lowering_for(node, target_lowerings)(ctx, node, arg(node.args), arg(dict(node.kwargs)))
                        ctx.env[node] = _lower_all(value, lambda v: ctx.emit(v, node.name) if isinstance(v, relax.Expr) else v)
                    except QCompilerError:
                        raise
                    except Exception as exc:
                        raise LoweringError(f"lowering node {node_label(node)} failed: {type(exc).__name__}: {exc}") from exc
                elif node.op == "output":
                    outputs = [ctx.expr(v) for v in output_leaves(arg(node.args[0]))]
                else:
                    raise LoweringError(f"node {node_label(node)} of kind {node.op} is not part of an integer program")
            result = bb.emit_output(relax.Tuple(outputs))
        bb.emit_func_output(result)
    return bb.get()
