"""The exact interpreter of an integer program: walks its fx graph and runs every op in
numpy (``kernels.py``; int64 inside). Float ops the scheme let fall back run in torch, as
they do in the simulation. The TVM builds must equal this bit for bit."""
from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.fx as fx

from .errors import QCompilerError
from .graph import get_tensor, node_label
from .integer_ops import op_of, run_numpy, to_numpy

aten = torch.ops.aten


def _dims(x, dims):
    return tuple(d % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims]))


def _slice(x, dim=0, start=None, end=None, step=1):
    index = [slice(None)] * x.ndim
    index[dim % x.ndim] = slice(start, None if end is not None and end >= 2**62 else end, step)
    return x[tuple(index)]


def _pad(x, pad, value=0):
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return np.pad(x, widths, constant_values=value)


def _flatten(x, start=0, end=-1):
    start, end = start % x.ndim, end % x.ndim
    return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])


# Layout ops on integer tensors, in numpy.
NUMPY_ATEN: dict[Any, Callable] = {
    aten.view.default: lambda x, shape: np.reshape(x, shape),
    aten.reshape.default: lambda x, shape: np.reshape(x, shape),
    aten._unsafe_view.default: lambda x, shape: np.reshape(x, shape),
    aten.permute.default: lambda x, dims: np.transpose(x, dims),
    aten.transpose.int: lambda x, a, b: np.swapaxes(x, a, b),
    aten.t.default: lambda x: x.T,
    aten.clone.default: lambda x, **kw: x.copy(),
    aten.alias.default: lambda x: x,
    aten.squeeze.dim: lambda x, d: np.squeeze(x, axis=d) if x.shape[d] == 1 else x,
    aten.squeeze.dims: lambda x, ds: np.squeeze(x, axis=tuple(d for d in _dims(x, ds) if x.shape[d] == 1)),
    aten.unsqueeze.default: lambda x, d: np.expand_dims(x, d if d >= 0 else x.ndim + 1 + d),
    aten.flatten.using_ints: _flatten,
    aten.expand.default: lambda x, shape: np.broadcast_to(x, [x.shape[i - (len(shape) - x.ndim)] if s == -1 else s for i, s in enumerate(shape)]),
    aten.slice.Tensor: _slice,
    aten.select.int: lambda x, dim, index: np.take(x, index, axis=dim),
    aten.constant_pad_nd.default: _pad,
    aten.sym_size.int: lambda x, d: x.shape[d],
}


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
            name = op_of(node.target)
            try:
                if name is not None:
                    value = run_numpy(name, args)
                elif node.target in NUMPY_ATEN:
                    value = NUMPY_ATEN[node.target](*args, **kwargs)
                elif node.target is operator.getitem:
                    value = args[0][args[1]]
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
        from torch.utils._pytree import tree_unflatten

        return tree_unflatten(list(result), info.out_spec)
    return result


def _map(value, fn):
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    return fn(value)
