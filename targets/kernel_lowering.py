"""Lowerings that put our int8 kernels (``targets/kernels``) into a program, for any
target, and the record of which kernel each conv2d / linear node got.

``scheduled_lowering`` emits a kernel of ours for an op, or the generic lowering
(``targets/lower.py``'s ``LOWERINGS[op]``) where the kernel cannot guarantee exactness
(its ``ExactnessError``) or the target cannot run it; either way it records a
``KernelChoice`` for the node in the ``choices`` dict it was given, which the target's
runtime exposes as ``runtime.kernel_choices``."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from .kernels.contract import ExactnessError
from .kernels.relax_call import emit_call_tir, kernel_info
from .lower import LOWERINGS, LowerContext

GENERIC = "generic"


@dataclass(frozen=True)
class KernelChoice:
    """The kernel a conv2d / linear node got: ``kernel`` names it (e.g. "x86 vpmaddwd
    gemm-conv (pointwise)", "arm sdot depthwise", or "generic": the generic lowering, TVM's
    default kernels); ``reason`` says why the generic lowering was used (the
    ExactnessError's text, or what the target lacks), None for our kernels."""

    kernel: str
    reason: Optional[str] = None

    @property
    def is_fallback(self) -> bool:
        return self.kernel == GENERIC


def kernel_name(func: tvm.tirx.PrimFunc, names: dict) -> str:
    """The display name of a kernel built by a kernel module whose ``KERNEL_NAMES`` are
    ``names`` ({kind: name, with {instruction} filled from its info})."""
    info = kernel_info(func)
    kind = str(info.get("kind", "kernel"))
    return names.get(kind, kind).format(instruction=info.get("instruction", ""))


def scheduled_lowering(kernels: ModuleType, kernel: str, generic: str, target: Callable[[], tvm.target.Target],
                       options: Optional[dict] = None, unavailable: Callable[[], Optional[str]] = lambda: None,
                       choices: Optional[dict] = None):
    """A lowering that emits ``kernels.<kernel>`` (e.g. "conv2d_requant_primfunc" of
    ``targets/kernels/x86.py`` or ``arm.py``: same API) built for ``target()``, and the
    generic lowering ``LOWERINGS[generic]`` where the kernel raises ``ExactnessError`` or
    ``unavailable()`` gives a reason (e.g. "this CPU has no AVX2"). ``options`` go to conv
    kernels (e.g. ``threads``, ``instruction``). Each lowered node's ``KernelChoice`` goes
    into ``choices[node.name]`` when ``choices`` is given. The kernel function is looked up
    on the module at each call (a benchmark may replace it)."""
    def lowering(ctx: LowerContext, node: fx.Node, args: tuple, kwargs: dict):
        reason = unavailable()
        if reason is not None:
            return _generic(ctx, node, args, kwargs, generic, reason, choices)
        x = ctx.expr(args[0])
        params = [np.asarray(a) if isinstance(a, np.ndarray) else a for a in args[1:-1]]
        if generic == "conv2d":
            x, params[PADDING_PARAM] = _fold_zero_point_pad(ctx, node, x, params[PADDING_PARAM], params[X_ZP_PARAM])
        extra = {k: v for k, v in (options or {}).items() if v is not None} if generic == "conv2d" else {}
        try:
            func, consts = getattr(kernels, kernel)(ctx.shape(x), ctx.dtype(x), *params,
                                                     out_dtype=_dtype_name(args[-1]), target=target(), **extra)
        except ExactnessError as exc:
            return _generic(ctx, node, args, kwargs, generic, str(exc), choices)
        if choices is not None:
            choices[node.name] = KernelChoice(kernel_name(func, getattr(kernels, "KERNEL_NAMES", {})))
        return emit_call_tir(ctx.bb, func, consts, x, name_hint=f"{generic}_{node.name}")
    return lowering


def generic_lowering(generic: str, reason: str, choices: Optional[dict] = None):
    """The generic lowering of ``generic``, recording ``KernelChoice("generic", reason)``."""
    def lowering(ctx: LowerContext, node: fx.Node, args: tuple, kwargs: dict):
        return _generic(ctx, node, args, kwargs, generic, reason, choices)
    return lowering


def _generic(ctx: LowerContext, node: fx.Node, args: tuple, kwargs: dict, generic: str, reason: str,
             choices: Optional[dict]):
    if choices is not None:
        choices[node.name] = KernelChoice(GENERIC, reason)
    return LOWERINGS[generic](ctx, node, args, kwargs)


# positions in qcompiler.conv2d's arguments after x: (w, bias, x_zp, stride, padding, ...)
X_ZP_PARAM, PADDING_PARAM = 2, 4


def _fold_zero_point_pad(ctx: LowerContext, node: fx.Node, x: Any, padding: Any, x_zp: Any) -> tuple[Any, Any]:
    """If the conv's input is a ``constant_pad_nd`` of its spatial dims by the conv's input
    zero point (TensorFlow "same" padding, which is asymmetric for stride 2), take the pad
    into the kernel: returns (the pad's input, (top, bottom, left, right) padding). The
    kernel then pads in its own scratch copy and the padded tensor is never written (the
    pad is left dead for dead-code elimination, unless something else uses it).
    Otherwise returns (x, padding) as given."""
    source = node.args[0]
    if not (isinstance(source, fx.Node) and source.op == "call_function"
            and source.target is torch.ops.aten.constant_pad_nd.default):
        return x, padding
    pad = [int(v) for v in source.args[1]]
    value = source.args[2] if len(source.args) > 2 else source.kwargs.get("value", 0)
    inner = ctx.env.get(source.args[0])
    if len(pad) != 4 or min(pad) < 0 or not isinstance(inner, relax.Expr) or float(value) != float(int(x_zp)):
        return x, padding
    (ph, pw), (left, right, top, bottom) = [int(v) for v in padding], pad
    return inner, (ph + top, ph + bottom, pw + left, pw + right)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")
