"""What a conversion rule (``registry.Rule``) works with: the integer values of the program
(``IntValue``), the output quantizer's parameters (``QParams``) and the match (``Match``).
The converter itself (``qcompiler/integer.py``) is passed to each rewrite as ``cv``; a rule
uses its helpers: ``cv.int_of(arg, node)``, ``cv.operand(arg, node, out)``,
``cv.tensor(node)``, ``cv.const(array, name)``, ``cv.bounds(acts, out, channels)``,
``cv.emit(target, args, match)`` and ``cv.ints`` (docs/custom-op.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the quantized_decomposed ops (Q/DQ)
import torch.fx as fx

from .. import meta
from ..errors import ConversionError
from ..qparams import is_dequantize, is_quantize

__all__ = ["ConversionError", "IntValue", "QParams", "Match", "pair", "shape_of"]



@dataclass
class IntValue:
    """An integer tensor of the program and the real values it stands for: s·(q − z)."""

    node: fx.Node
    scale: float
    zp: int
    qmin: int
    qmax: int
    dtype: torch.dtype


@dataclass(frozen=True)
class QParams:
    """An output quantizer's parameters (quantize_per_tensor's arguments)."""

    scale: float
    zp: int
    qmin: int
    qmax: int
    dtype: torch.dtype


@dataclass
class Match:
    """A match of ``Q(act…(node(…)))``: ``node`` the float op, ``acts`` the clamp-like
    activations after it (in order), ``out`` the quantizer's parameters, ``q`` the
    quantize node the result stands for, ``name`` the name the integer op takes."""

    node: fx.Node
    acts: list
    out: QParams
    q: fx.Node
    name: str


def pair(v: Any) -> list[int]:
    """An int or a 1/2-sequence as a pair [a, b] (torch's _pair)."""
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    return v * 2 if len(v) == 1 else v


def shape_of(node: Any) -> Optional[torch.Size]:
    """A value's shape from its metadata; for a dequantize without any (PT2E inserts them
    so), the shape of the value its quantize took."""
    while isinstance(node, fx.Node):
        val = node.meta.get(meta.VAL)
        if isinstance(val, torch.Tensor):
            return val.shape
        if is_quantize(node) or is_dequantize(node):
            node = node.args[0]
        else:
            return None
    return None

