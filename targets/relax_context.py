"""What a lowering sees (``LowerContext``): the Relax BlockBuilder, the program, the value of
every node so far, and the integer arithmetic of docs/semantics.md as Relax, done in int64
exactly as ``qcompiler.fixed_point.requantize``: ``clamp(z + ((acc·m + 2^(S−1)) >> S), lo, hi)``.
Op lowerings (``qcompiler/ops``: each op's ``lowering``) build on it."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from qcompiler.errors import QCompilerError
from qcompiler.ops import TORCH_TO_NUMPY

R = relax.op

__all__ = ["LowerContext", "LoweringError", "dtype_range", "INT32_LIMIT"]

INT32_LIMIT = 2**31


class LoweringError(QCompilerError):
    """An integer program could not be lowered to TVM Relax (ops with no lowering, or a
    lowering that failed; the TVM error is chained beneath)."""


def dtype_range(dtype: str) -> tuple[int, int]:
    """(min, max) of an integer dtype."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


class LowerContext:
    """What a lowering sees: the BlockBuilder, the program, the value of every node so far,
    and helpers for the integer arithmetic of docs/semantics.md. ``ctx.R`` is
    ``tvm.relax.op``: the op files of qcompiler/ops reach TVM only through it, so that
    ``import qcompiler`` does not load TVM."""

    R = relax.op

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
            lo, hi = dtype_range(self.dtype(x))
            dtype = self.int_dtype_for(min(lo - zp, hi - zp), max(lo - zp, hi - zp))
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
        return self.astype(acc, self.np_dtype(out_dtype))

    # dtypes and bounds -----------------------------------------------------
    @staticmethod
    def np_dtype(dtype: Any) -> str:
        """A torch or numpy dtype's name ("int8")."""
        if isinstance(dtype, torch.dtype):
            return str(np.dtype(TORCH_TO_NUMPY[dtype]))
        return str(np.dtype(dtype))

    @staticmethod
    def int_dtype_for(lo: int, hi: int) -> str:
        """The narrowest of int16/int32/int64 holding [lo, hi]."""
        for dtype in ("int16", "int32", "int64"):
            a, b = dtype_range(dtype)
            if a <= lo and hi <= b:
                return dtype
        raise LoweringError(f"no integer dtype holds [{lo}, {hi}]")

    def max_abs(self, x: relax.Expr, zp: int = 0) -> int:
        """The largest |v − zp| over x's dtype."""
        lo, hi = dtype_range(self.dtype(x))
        return max(abs(lo - zp), abs(hi - zp))

    @staticmethod
    def acc_dtype(bound: int) -> str:
        """int32 when every partial sum provably fits (|Σ| ≤ bound < 2^31), else int64."""
        return "int32" if bound < INT32_LIMIT else "int64"

    # expressions -------------------------------------------------------------
    @staticmethod
    def is_expr(value: Any) -> bool:
        return isinstance(value, relax.Expr)

    @staticmethod
    def is_tuple(value: Any) -> bool:
        return isinstance(value, relax.Expr) and isinstance(value.ty, relax.TupleType)

    @staticmethod
    def tuple_get_item(value: relax.Expr, index: int) -> relax.Expr:
        return relax.TupleGetItem(value, index)

    @staticmethod
    def error(message: str) -> "LoweringError":
        """A LoweringError for a lowering to raise."""
        return LoweringError(message)
