"""The exact interpreter of an integer program: walks its fx graph and runs every op's numpy
reference from the op registry (``qcompiler/ops``; int64 inside). Float ops the scheme let
fall back run in torch, as they do in the simulation. The TVM builds must equal this bit for
bit."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.fx as fx
from torch.utils._pytree import tree_unflatten

from .errors import QCompilerError
from .graph import get_tensor, node_label
from .ops import op_for_target


def _as_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def interpret(program: fx.GraphModule, *inputs: Any, force: Optional[dict] = None, record: Optional[dict] = None) -> Any:
    """Run ``program`` on ``inputs`` (tensors or arrays); returns torch tensors.

    force: {node name: array} values used in place of what the program computes (to test
        each op on the simulation's own inputs); record: a dict filled with every value the
        program computed (before any forcing).
    """
    env: dict[str, Any] = {}
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    if len(inputs) != len(placeholders):
        raise QCompilerError(f"the program takes {len(placeholders)} input(s), got {len(inputs)}")

    def arg(a):
        if isinstance(a, fx.Node):
            return env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(arg(v) for v in a)
        return a

    result = None
    for node in program.graph.nodes:
        if node.op == "placeholder":
            value = _as_numpy(inputs[placeholders.index(node)])
        elif node.op == "get_attr":
            value = _as_numpy(get_tensor(program, node))
        elif node.op == "call_function":
            args, kwargs = arg(node.args), {k: arg(v) for k, v in node.kwargs.items()}
            op = op_for_target(node.target)
            try:
                if op is not None:
                    value = op.run(args, kwargs)
                else:  # a float op kept in float by the scheme: run it in torch, as the simulation does
                    to_t = lambda v: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                    out = node.target(*_map(args, to_t), **{k: _map(v, to_t) for k, v in kwargs.items()})
                    value = _as_numpy(out) if isinstance(out, torch.Tensor) else out
            except QCompilerError:
                raise
            except Exception as exc:
                raise QCompilerError(f"interpreter: node {node_label(node)} failed: {type(exc).__name__}: {exc}") from exc
        elif node.op == "output":
            result = arg(node.args[0])
            break
        else:
            raise QCompilerError(f"interpreter: node {node_label(node)} of kind {node.op} is not part of an integer program")
        if record is not None:
            record[node.name] = value
        if force is not None and node.name in force:
            value = np.asarray(force[node.name]).astype(np.asarray(value).dtype)
        env[node.name] = value
    result = _map(result, lambda v: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
    info = getattr(program.graph._codegen, "pytree_info", None)
    if info is not None and info.out_spec is not None:
        return tree_unflatten(list(result), info.out_spec)
    return result


def _map(value, fn):
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    return fn(value)
