"""How each ATen op takes part in quantization, read from the op registry (``qcompiler/ops``:
each op's ``sources``). Live views, not tables of their own: an op added with
``register_op`` shows here at once. The kinds are described in ``qcompiler/ops/registry.py``."""
from __future__ import annotations

from .ops.registry import (ACTIVATION, KINDS, OWN, PASSTHROUGH, SHARED, WEIGHTED, SourceView, arg_check, fuses_activations,
                           op_arg, op_kind, op_name, source_of)

CLAMP_BOUNDS = SourceView("bounds")
"""{clamp-like activation: bounds(node) -> (lo, hi) as Python numbers (None = unbounded)}."""

ARG_CHECKS = SourceView("check")
"""{ATen op: check(node) -> '' if its arguments have an integer form, else why not}."""

__all__ = ["ACTIVATION", "KINDS", "OWN", "PASSTHROUGH", "SHARED", "WEIGHTED", "CLAMP_BOUNDS", "ARG_CHECKS", "arg_check",
           "fuses_activations", "op_arg", "op_kind", "op_name", "source_of"]
