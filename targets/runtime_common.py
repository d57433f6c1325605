"""What the runtimes of every target share: input checks, the lowered function's input
types, and the output structure of the program."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten, tree_unflatten
from tvm import relax

from qcompiler.errors import QCompilerError


def input_array(i: int, value: Any, shape: tuple, dtype: str) -> np.ndarray:
    """Input ``i`` (numpy array or torch tensor) as a contiguous numpy array of the built
    program's ``shape`` and ``dtype``: floats are cast to a float dtype; any other mismatch
    is an error that says what was expected."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if tuple(value.shape) != shape:
        raise QCompilerError(f"input {i} has shape {tuple(value.shape)}, but the program was built for {shape} "
                             f"(static shapes: lower and build again with an example input of this shape)")
    if value.dtype != np.dtype(dtype):
        if np.issubdtype(value.dtype, np.floating) and np.issubdtype(np.dtype(dtype), np.floating):
            value = value.astype(dtype)
        else:
            raise QCompilerError(f"input {i} has dtype {value.dtype}, but the program was built for {dtype}")
    return np.ascontiguousarray(value)


def function_input_types(func: relax.Function) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each parameter of a lowered Relax function (static shapes)."""
    return [(tuple(int(s) for s in p.ty.shape), str(p.ty.dtype.dtype)) for p in func.params]


def output_structure(arrays: list[np.ndarray], out_spec: Any) -> Any:
    """The output leaves as torch tensors, in the program's output structure (a tuple
    when ``out_spec`` is None)."""
    leaves = [torch.from_numpy(a) for a in arrays]
    if out_spec is None:
        return tuple(leaves)
    return tree_unflatten(leaves, out_spec)


def program_out_spec(program: fx.GraphModule) -> Any:
    """The program's output structure (as qcompiler.interpreter restores it)."""
    info = getattr(program.graph._codegen, "pytree_info", None)
    if info is not None and info.out_spec is not None:
        return info.out_spec
    output = next(n for n in program.graph.nodes if n.op == "output")
    return tree_flatten(output.args[0])[1]
