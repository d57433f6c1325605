"""Small helpers for reading and rewriting captured fx graphs.

The op tables here are the one place that says which ATen ops count as a convolution,
a linear layer, a batch norm or an activation; passes match against them.
"""
from __future__ import annotations

import operator
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the quantized_decomposed ops (the IR's Q/DQ)
import torch.fx as fx

from . import meta
from .errors import GraphError

TORCH_DIR = os.path.dirname(torch.__file__)

aten = torch.ops.aten

CONV_OPS = {aten.convolution.default, aten.conv2d.default}
LINEAR_OPS = {aten.linear.default}
BN_EVAL_OPS = {aten._native_batch_norm_legit_no_training.default}
BN_TRAIN_OPS = {
    aten._native_batch_norm_legit_functional.default,
    aten._native_batch_norm_legit.default,
    aten.native_batch_norm.default,
    aten.batch_norm.default,
}


def clone_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy of ``gm`` (graph, parameters, buffers, meta), without the FutureWarning
    torch's pytree emits when a captured module is copied."""
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(gm)


def is_call(node: Any, ops: Iterable) -> bool:
    """True if ``node`` is a call_function node whose target is in ``ops``."""
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in ops


# ---------------------------------------------------------------- parameters and constants

def get_tensor(gm: fx.GraphModule, node_or_target: fx.Node | str) -> torch.Tensor:
    """The tensor behind a get_attr node (or a dotted attribute path) of ``gm``."""
    target = node_or_target.target if isinstance(node_or_target, fx.Node) else node_or_target
    obj: Any = gm
    for part in str(target).split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"attribute '{target}' of the graph module is {type(obj).__name__}, not a tensor")
    return obj


def _owner_and_name(gm: fx.GraphModule, target: str) -> tuple[torch.nn.Module, str]:
    *path, name = target.split(".")
    owner: torch.nn.Module = gm
    for part in path:
        if not hasattr(owner, part):
            owner.add_module(part, torch.nn.Module())
        owner = getattr(owner, part)
    return owner, name


def set_tensor(gm: fx.GraphModule, target: str, value: torch.Tensor, keep_dtype: bool = False) -> None:
    """Bind ``target`` to a new tensor (never writes into the old one, which may be shared
    with the user's model or with another node). Floating tensors are stored as float32
    unless ``keep_dtype`` (a float64 quantization scale keeps its exact value)."""
    owner, name = _owner_and_name(gm, target)
    value = value.detach().to(torch.float32) if value.is_floating_point() and not keep_dtype else value.detach()
    if name in owner._parameters:
        del owner._parameters[name]
    if name in owner._buffers:
        del owner._buffers[name]
    owner.register_buffer(name, value.contiguous().clone())


def add_constant(gm: fx.GraphModule, name_hint: str, value: torch.Tensor, before: fx.Node,
                 keep_dtype: bool = False) -> fx.Node:
    """Register ``value`` as a new buffer of ``gm`` (float32 if floating, unless
    ``keep_dtype``) and return a get_attr node for it, inserted before ``before``."""
    base = re.sub(r"[^0-9a-zA-Z_]", "_", name_hint) or "const"
    target, i = base, 0
    existing = {n for n, _ in gm.named_buffers()} | {n for n, _ in gm.named_parameters()}
    while target in existing or hasattr(gm, target):
        i += 1
        target = f"{base}_{i}"
    set_tensor(gm, target, value, keep_dtype)
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(target)
    node.meta[meta.VAL] = value
    return node


def run_on_constants(gm: fx.GraphModule, node: fx.Node) -> Any:
    """The value of a call_function ``node`` whose inputs are constants of ``gm`` (get_attr
    nodes) or other such nodes, computed with torch (e.g. a weight's dequantize). Raises
    GraphError naming the first input that is not computed from constants."""
    def value(arg: fx.Node) -> Any:
        if arg.op == "get_attr":
            return get_tensor(gm, arg)
        if arg.op == "call_function":
            return run_on_constants(gm, arg)
        raise GraphError(f"{node_label(arg)} is not computed from constants (an input of {node_label(node)})")

    args = fx.node.map_arg(node.args, value)
    kwargs = fx.node.map_arg(node.kwargs, value)
    return node.target(*args, **kwargs)


def tensor_arg(gm: fx.GraphModule, node: fx.Node, index: int) -> Optional[torch.Tensor]:
    """The constant tensor passed as argument ``index`` of ``node`` (None if the argument is
    None or absent). Raises GraphError if it is not a get_attr constant."""
    arg = node.args[index] if index < len(node.args) else None
    if arg is None:
        return None
    if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
        raise GraphError(f"node '{node.name}' ({node.target}): argument {index} is not a constant")
    return get_tensor(gm, arg)


def is_constant(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def replace_constant_arg(gm: fx.GraphModule, node: fx.Node, index: int, value: torch.Tensor, hint: str) -> None:
    """Give argument ``index`` of ``node`` a new constant ``value`` (a fresh buffer, so a
    tensor shared with other nodes or with the user's model is never modified)."""
    const = add_constant(gm, hint, value, before=node)
    args = list(node.args)
    while len(args) <= index:
        args.append(None)
    old = args[index]
    args[index] = const
    node.args = tuple(args)
    if isinstance(old, fx.Node) and old.op == "get_attr" and not old.users:
        gm.graph.erase_node(old)


def remove_unused_constants(gm: fx.GraphModule) -> int:
    """Erase get_attr nodes nothing uses and drop buffers no node refers to. Returns the
    number of nodes erased."""
    erased = 0
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
            erased += 1
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_buffers()) + list(gm.named_parameters()):
        if name not in used:
            owner, attr = _owner_and_name(gm, name)
            owner._buffers.pop(attr, None)
            owner._parameters.pop(attr, None)
    return erased


# ---------------------------------------------------------------- convolution / linear views

@dataclass
class LayerView:
    """A conv or linear node seen as a weighted layer: where its weight and bias are and
    how its channels are grouped. ``weight`` is [out, in/groups, *kernel] for both kinds."""

    node: fx.Node
    kind: str  # "conv" or "linear"
    groups: int
    out_channels: int
    in_channels: int

    @property
    def weight_node(self) -> fx.Node:
        return self.node.args[1]

    @property
    def bias_node(self) -> Optional[fx.Node]:
        return self.node.args[2] if len(self.node.args) > 2 else None

    @property
    def channel_dim(self) -> int:
        """The dimension of this layer's output that holds its output channels."""
        return 1 if self.kind == "conv" else -1

    @property
    def is_depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    def padding(self) -> list[int]:
        if self.kind != "conv":
            return [0]
        pad = self.node.args[4]
        return list(pad) if isinstance(pad, (list, tuple)) else [pad]

    def describe(self) -> str:
        if self.kind == "linear":
            return "linear"
        return "depthwise conv" if self.is_depthwise else ("grouped conv" if self.groups > 1 else "conv")


def layer_view(gm: fx.GraphModule, node: Any) -> Optional[LayerView]:
    """A LayerView of ``node`` if it is a (non-transposed) conv or a linear whose weight is
    a constant; None otherwise (the pass then leaves the node alone)."""
    if is_call(node, CONV_OPS):
        if node.target == aten.convolution.default and node.args[6]:  # transposed
            return None
        groups = node.args[8] if node.target == aten.convolution.default else (node.args[6] if len(node.args) > 6 else 1)
        kind = "conv"
    elif is_call(node, LINEAR_OPS):
        groups, kind = 1, "linear"
    else:
        return None
    if not is_constant(node.args[1]):
        return None
    if len(node.args) > 2 and node.args[2] is not None and not is_constant(node.args[2]):
        return None
    w = get_tensor(gm, node.args[1])
    return LayerView(node, kind, int(groups), w.shape[0], w.shape[1] * int(groups))


def output_shape(node: fx.Node) -> Optional[torch.Size]:
    """The (possibly symbolic) shape of ``node``'s output from its metadata, if known."""
    val = node.meta.get(meta.VAL)
    return val.shape if isinstance(val, torch.Tensor) else None


def single_user(node: fx.Node) -> Optional[fx.Node]:
    """The only user of ``node``, or None if it has zero or several."""
    return next(iter(node.users)) if len(node.users) == 1 else None


def replace_all_uses(old: fx.Node, new: fx.Node) -> None:
    """Point every user of ``old`` at ``new`` and carry ``old``'s output metadata over."""
    old.replace_all_uses_with(new)
    if meta.VAL in old.meta and meta.VAL not in new.meta:
        new.meta[meta.VAL] = old.meta[meta.VAL]


def getitem_users(node: fx.Node) -> dict[int, fx.Node]:
    """{index: node} for the ``operator.getitem`` users of a tuple-valued node."""
    return {u.args[1]: u for u in node.users if u.op == "call_function" and u.target is operator.getitem}


def node_label(node: fx.Node) -> str:
    """'name (op)' for error messages and reports."""
    target = str(node.target) if isinstance(node.target, torch._ops.OpOverload) else getattr(node.target, "__name__", str(node.target))
    return f"'{node.name}' ({target})"


def is_float_tensor(node: Any) -> bool:
    val = node.meta.get(meta.VAL) if isinstance(node, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def is_tuple_valued(node: Any) -> bool:
    """Whether ``node`` returns several values (read through ``getitem``: split, a max pool
    with indices, BatchNorm, layer/group norm)."""
    return isinstance(node, fx.Node) and isinstance(node.meta.get(meta.VAL), (tuple, list))


def produces_float(node: Any) -> bool:
    """Whether ``node`` returns a float tensor, or a tuple holding one."""
    if is_tuple_valued(node):
        return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in node.meta[meta.VAL])
    return is_float_tensor(node)


def module_of(node: fx.Node) -> Optional[tuple[str, str]]:
    """(path, class name) of the innermost module ``node`` was traced in ('blocks.0.norm',
    'LayerNorm'; the path is '' for the model itself), or None if torch.export recorded none."""
    stack = node.meta.get(meta.NN_MODULE_STACK)
    if not stack:
        return None
    path, kind = list(stack.values())[-1]
    return path, kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]


def source_location(node: fx.Node) -> str:
    """Where the user's model computes ``node``: 'file.py:12 `y = self.norm(x)`' (the
    innermost frame of its stack trace outside torch), then the module it was traced in
    ('in blocks.0.norm (LayerNorm)'); '' when torch.export recorded neither."""
    parts = []
    frames = re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n?([^\n]*)', node.meta.get("stack_trace") or "")
    user = [f for f in frames if not os.path.abspath(f[0]).startswith(TORCH_DIR)]
    if user:
        path, line, code = user[-1]
        parts.append(f"{os.path.basename(path)}:{line}" + (f" `{code.strip()}`," if code.strip() else ","))
    module = module_of(node)
    if module:
        path, kind = module
        parts.append(f"in module '{path}' ({kind})" if path else f"in the model ({kind})")
    return " ".join(parts)

