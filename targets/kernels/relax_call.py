"""How a kernel enters a Relax module (``emit_call_tir``) and what it says about itself
(``kernel_info``)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tvm
from tvm import relax

KERNEL_ATTR = "qcompiler.kernel"


def with_info(func: tvm.tirx.PrimFunc, info: dict) -> tvm.tirx.PrimFunc:
    """``func`` carrying ``info`` (kind, tiling, epilogue) for ``kernel_info``."""
    return func.with_attr(KERNEL_ATTR, info)


def kernel_info(func: tvm.tirx.PrimFunc) -> dict:
    """The kernel choice recorded on a PrimFunc built here (kind, tiling, epilogue); {}
    for any other function."""
    attr = func.attrs.get(KERNEL_ATTR) if func.attrs is not None else None
    return dict(attr) if attr is not None else {}


def emit_call_tir(bb: relax.BlockBuilder, func: tvm.tirx.PrimFunc, consts: Sequence[np.ndarray], x: relax.Expr,
                  name_hint: Optional[str] = None) -> relax.Var:
    """Emit ``relax.call_tir(func, [x, *consts])`` in the current dataflow block of ``bb``:
    the function is added without its global symbol (Relax names it, so that several
    kernels may share a name) and the constants become Relax constants. Returns the bound
    output variable."""
    out = func.params[-1].ty
    out_sinfo = relax.TensorType([int(v) for v in out.shape], str(out.dtype))
    symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
    name = name_hint or (str(symbol) if symbol is not None else "kernel")
    gv = bb.add_func(func.without_attr("global_symbol"), name)
    return bb.emit(relax.call_tir(gv, [x, *[relax.const(c) for c in consts]], out_sinfo))
