"""Lower an integer program (qcompiler's fx GraphModule of integer ops) to a TVM Relax
IRModule: each node through its op's lowering from the op registry (``qcompiler/ops``), each
computing exactly what the op's numpy reference does (docs/semantics.md).

    mod = lower(qm.program, example_inputs)       # tvm.IRModule with a Relax function "main"

``main`` takes the program's placeholders in order (static shapes and dtypes taken from the
example inputs) and returns a Relax tuple of the program's outputs, flattened in pytree
order (``output_leaves``), always a tuple, even for one output.

A node's lowering is, first found: the target's own (``target_lowerings``, e.g. our
scheduled kernels), one registered with ``register_lowering`` (``LOWERINGS``), its op's in
the registry, ours for a float fallback op (``float_lowerings.FLOAT_LOWERINGS``), or
``tvm.relax.frontend.torch``'s translator. Each is a function ``fn(ctx, node, args, kwargs)
-> relax.Expr`` (or a tuple of them, or a Python value for shape arithmetic such as
``sym_size``), where ``args``/``kwargs`` are the node's arguments with every input node
replaced by its value: a Relax expression for tensors, a numpy array for get_attr constants
(``ctx.expr(a)`` turns either into a Relax expression), a Python number otherwise.

conv2d/linear/matmul center their inputs (``q − z``, int16 when it fits) and accumulate with
``relax.op.nn.conv2d`` / ``relax.op.matmul`` into int32 when the worst-case sum provably fits,
int64 otherwise; then bias and requantize in int64, as standard Relax ops, so the default
pipeline's LegalizeOps + FuseOps + FuseTIR make one primfunc per conv/linear/matmul +
requantize epilogue, which a later schedule pass can find.

Shapes are static (taken from the example inputs); ``sym_size`` folds to the example's
size. A program node with no lowering is a ``LoweringError`` that lists every such node at
once.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.fx as fx
import tvm
from torch.utils._pytree import tree_leaves
from tvm import relax

from qcompiler.errors import QCompilerError
from qcompiler.graph import get_tensor, node_label
from qcompiler.ops import find_op, op_for_target, op_of

from .float_lowerings import FLOAT_LOWERINGS, frontend_lowering, has_frontend_lowering
from .relax_context import LowerContext, LoweringError

__all__ = ["lower", "register_lowering", "lowering_for", "missing_lowerings", "LoweringError", "LowerContext",
           "LOWERINGS", "FLOAT_LOWERINGS", "output_leaves", "op_key"]

R = relax.op  # for lowerings written against this module (register_lowering)
Lowering = Callable[[LowerContext, fx.Node, tuple, dict], Any]


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


class _Lowerings(dict):
    """op key -> lowering registered with ``register_lowering``; looking up a key that has
    none gives the op registry's lowering of that op (``LOWERINGS["conv2d"]``)."""

    def __missing__(self, key: str) -> Lowering:
        op = find_op(key)
        if op is None or op.lowering is None:
            raise KeyError(key)
        return op.lowering


LOWERINGS: dict[str, Lowering] = _Lowerings()
"""Lowerings registered with ``register_lowering`` (they replace the registry's); reading a
key gives the registry's lowering of an op when none is registered."""


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


def lowering_for(node: fx.Node, target_lowerings: Optional[dict] = None) -> Optional[Lowering]:
    """The lowering of a call_function node, or None. ``target_lowerings`` (a target's own
    table, keyed like LOWERINGS) comes first."""
    key = op_key(node.target)
    if target_lowerings and key in target_lowerings:
        return target_lowerings[key]
    if key in LOWERINGS:
        return LOWERINGS[key]
    op = op_for_target(node.target)
    if op is not None and op.lowering is not None:
        return op.lowering
    if key in FLOAT_LOWERINGS:
        return FLOAT_LOWERINGS[key]
    if has_frontend_lowering(node):
        return frontend_lowering
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


def _lower_all(values: Any, fn: Callable) -> Any:
    if isinstance(values, (list, tuple)):
        return type(values)(_lower_all(v, fn) for v in values)
    return fn(values)


# ---------------------------------------------------------------- lower


def output_leaves(value: Any) -> list:
    """The leaves of a program's output structure, in pytree order (how ``main`` returns them)."""
    return tree_leaves(value, is_leaf=lambda v: isinstance(v, (fx.Node, relax.Expr)))


def _input_type(example: Any) -> relax.TensorType:
    if isinstance(example, relax.TensorType):
        return example
    if isinstance(example, torch.Tensor):
        return relax.TensorType(tuple(example.shape), LowerContext.np_dtype(example.dtype))
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
