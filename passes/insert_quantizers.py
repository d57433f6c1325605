"""insert_quantizers: place observers for every activation the integer program will hold,
and quantize conv/linear weights, per a QuantScheme and per-node overrides.

The observers become quantize→dequantize pairs (PyTorch's ``quantized_decomposed`` ops, the
PT2E representation) when the ``calibrate`` pass has set their ranges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.fx as fx

from qcompiler import meta
from qcompiler.errors import OverrideError, QCompilerError, UnsupportedOpError, did_you_mean
from qcompiler.graph import (add_constant, aten, get_tensor, getitem_users, is_float_tensor, is_tuple_valued, layer_view,
                             node_label, produces_float, single_user, source_location)
from qcompiler.observers import ActivationObserver, weight_qparams
from qcompiler.qparams import DEQUANTIZE_OPS, QUANTIZE_OPS, QuantParams, insert_dequantize
from qcompiler.pass_manager import Pass, PassContext, PassResult, Problem, register_pass
from qcompiler.ops import (ACTIVATION, OWN, PASSTHROUGH, SHARED, WEIGHTED, arg_check, fuses_activations, op_kind, op_name,
                           source_of)
from qcompiler.scheme import QuantScheme, QuantSpec, check_overrides, host_scheme

__all__ = ["InsertQuantizers", "NodeOverride", "UnsupportedOpError", "is_float_tensor", "produces_float"]


@dataclass(frozen=True)
class NodeOverride:
    """Per-node (or per-op-type) choices: keep in float, or other weight/activation specs."""

    float: bool = False
    weights: Optional[QuantSpec] = None
    activations: Optional[QuantSpec] = None


OverrideValue = Union[str, dict, NodeOverride]


def _parse_override(key: str, value: OverrideValue) -> NodeOverride:
    """The NodeOverride of one override, its form checked by scheme.check_overrides
    (SchemeError naming the key and the fix)."""
    check_overrides({key: value})
    if isinstance(value, NodeOverride):
        return value
    return NodeOverride(float=True) if value == "float" else NodeOverride(**value)


class SharedQuantizer(torch.nn.Module):
    """Identity in the graph: marks a value re-quantized with the parameters of ``source``."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def forward(self, x):
        return x

    def extra_repr(self) -> str:
        return f"source={self.source}"


_QDQ_OPS = set(QUANTIZE_OPS + DEQUANTIZE_OPS)


def _unused_outputs_check(node: fx.Node) -> str:
    """'' unless ``node`` computes only one output of a tuple in integers
    (``Source.integer_outputs``) and another one is used."""
    source = source_of(node.target)
    only = getattr(source, "integer_outputs", None)
    if only is None or not is_tuple_valued(node):
        return ""
    used = sorted(i for i, g in getitem_users(node).items() if i != only and g.users)
    return f"its output(s) {used} are used, and only output {only} has an integer form" if used else ""


@register_pass(after=["fold_bn", "equalize"])
class InsertQuantizers(Pass):
    """Place an observer after every value the integer program quantizes, and replace
    each conv/linear weight by its integer values behind a dequantize.

    Where observers go: graph inputs; after conv/linear (after the relu/relu6/clamp chain that
    follows it when ``scheme.fuse_activations``, depthwise included); after add, mul, cat,
    matmul and table-driven unary ops; after ops kept in float. Average pools, means and
    standalone clamps are re-quantized with their input's parameters (per-tensor ones; an
    input quantized per channel or group gives them their own); layout ops, max pooling
    and zero padding need no quantizer (integer values pass through unchanged).

    Requires: a float graph (no observers, quantize or dequantize nodes yet) whose every op
    has an integer form or may fall back to float (else UnsupportedOpError listing them all);
    overrides that name nodes or ops of the graph.
    Ensures: every conv/linear the scheme quantizes takes its weight from a dequantize, with
    its float weight and spec in ``node.meta[meta.FLOAT_WEIGHT]``/``[meta.WEIGHT_SPEC]``;
    ``gm.meta[meta.SCHEME]`` and ``gm.meta[meta.OVERRIDES]`` are set.
    Preserves nothing by itself (``calibrate`` turns observers into quantizers); until then
    the graph computes the float function with quantized weights.
    """

    preserves = "nothing"

    def __init__(self, scheme: Optional[QuantScheme] = None, overrides: Optional[dict] = None, method: str = "minmax",
                 weight_method: Optional[str] = None):
        self.scheme = scheme or host_scheme()
        self.raw_overrides = dict(overrides or {})
        self.method = method
        self.weight_method = weight_method

    # -- overrides -------------------------------------------------------------------
    def _resolve_overrides(self, gm: fx.GraphModule) -> dict[fx.Node, NodeOverride]:
        by_name = {n.name: n for n in gm.graph.nodes}
        ops = {op_name(n.target): n for n in gm.graph.nodes if n.op == "call_function"}
        short = {name.split(".")[1] if name.startswith("aten.") else name: name for name in ops}
        resolved: dict[fx.Node, NodeOverride] = {}
        problems = []
        for key, value in self.raw_overrides.items():
            override = _parse_override(key, value)
            if key in by_name:
                resolved[by_name[key]] = override
            elif key in ops or key in short:
                full = key if key in ops else short[key]
                for n in gm.graph.nodes:
                    if n.op == "call_function" and op_name(n.target) == full:
                        resolved.setdefault(n, override)
            else:
                problems.append(f"'{key}'{did_you_mean(key, list(by_name) + list(ops) + list(short), n=3)}")
        if problems:
            raise OverrideError(
                "overrides name nodes or ops that are not in the graph: " + ", ".join(problems)
                + ". Keys are node names (as qm.analyze() and quantize's errors print them) or op names such as "
                "'aten.hardswish.default' or 'hardswish'. The ops in this graph: " + ", ".join(sorted(short)) + "."
            )
        return resolved

    # -- classification ------------------------------------------------------------------
    def _kind(self, node: fx.Node, overrides: dict) -> Optional[str]:
        """The node's quantization kind, 'float' if it runs in float, None if not a float op
        or one with no integer form (``_why_not``)."""
        if node.op != "call_function" or not produces_float(node):
            return None
        if node in overrides and overrides[node].float:
            return "float"
        kind = op_kind(node.target)
        if kind is not None and self._why_not(node):
            kind = None
        if kind is None and op_name(node.target) in self.scheme.fallback_ops:
            return "float"
        return kind

    @staticmethod
    def _why_not(node: fx.Node) -> str:
        """Why an op with a registry row has no integer form with these arguments ('' if it has)."""
        return arg_check(node) or _unused_outputs_check(node)

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> list[Problem]:
        quantized = [n.name for n in gm.graph.nodes if n.target in _QDQ_OPS
                     or (n.op == "call_module" and str(n.target).startswith(meta.OBSERVER_PREFIX))]
        if quantized:
            return [Problem(f"the graph is already quantized: it has quantizers or observers ({', '.join(quantized[:5])}"
                            f"{', ...' if len(quantized) > 5 else ''})",
                            "give insert_quantizers the float graph (quantize() takes the float model); to compile a "
                            "PT2E-quantized graph use qcompiler.from_pt2e")]
        overrides = self._resolve_overrides(gm)
        unsupported = [n for n in gm.graph.nodes if n.op == "call_function" and produces_float(n)
                       and self._kind(n, overrides) is None]
        if unsupported:
            raise unsupported_error([(n, self._why_not(n)) for n in unsupported], self.scheme)
        return []

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> list[Problem]:
        problems = [Problem(f"gm.meta['{key}'] is not set", "report this as a bug in insert_quantizers")
                    for key in (meta.SCHEME, meta.OVERRIDES) if key not in gm.meta]
        for node in gm.graph.nodes:
            if meta.WEIGHT_SPEC not in node.meta:
                continue
            weight = node.args[1]
            if not (isinstance(weight, fx.Node) and weight.target in _QDQ_OPS and meta.FLOAT_WEIGHT in node.meta):
                problems.append(Problem(f"{node_label(node)}: its weight is not behind a dequantize",
                                        "report this as a bug in insert_quantizers"))
        return problems

    # -- the rewrite -----------------------------------------------------------------------
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        overrides = self._resolve_overrides(gm)
        kinds = {n: self._kind(n, overrides) for n in gm.graph.nodes}
        points: dict[fx.Node, Any] = {}  # node -> QuantSpec (own) or fx.Node (shared with that point)
        source: dict[fx.Node, fx.Node] = {}  # value -> the quantization point whose parameters it carries

        def act_spec(*nodes: fx.Node) -> QuantSpec:
            """The activation spec of the value ``nodes`` produce (a fused chain: any override on it)."""
            for node in nodes:
                o = overrides.get(node)
                if o is not None and o.activations is not None:
                    return o.activations
            return self.scheme.activations

        def fused_end(node: fx.Node) -> fx.Node:
            if not self.scheme.fuse_activations:
                return node
            end = node
            while True:
                user = single_user(end)
                if user is None or kinds.get(user) != ACTIVATION or user.args[0] is not end:
                    return end
                end = user

        def share_or_own(node: fx.Node, value: Any) -> None:
            """``node`` re-quantized with the parameters of ``value``'s point (own ones if
            it has none, or per-channel/group ones: the op may move or reduce the axis)."""
            src = source.get(value) if isinstance(value, fx.Node) else None
            if src is not None and _root_spec(points, src).granularity != "tensor":
                src = None
            points[node] = act_spec(node) if src is None else src
            source[node] = node

        fused_into: dict[fx.Node, fx.Node] = {}
        chain_of: dict[fx.Node, list[fx.Node]] = {}
        tuple_kind: dict[fx.Node, str] = {}  # a tuple-valued op that is not passthrough: its quantizers go on its getitems
        for node in gm.graph.nodes:
            kind = kinds.get(node)
            if kind == "float":
                node.meta[meta.KEPT_FLOAT] = "override" if node in overrides and overrides[node].float else "fallback_ops"
            if node.op == "placeholder" and is_float_tensor(node):
                points[node] = act_spec(node)
                source[node] = node
            elif kind in (WEIGHTED, OWN, "float", SHARED, ACTIVATION) and is_tuple_valued(node):
                tuple_kind[node] = kind
            elif node.op == "call_function" and node.args and node.args[0] in tuple_kind and is_float_tensor(node):
                parent = node.args[0]
                only = getattr(source_of(parent.target), "integer_outputs", None)
                if tuple_kind[parent] != "float" and only is not None and node.args[1] != only:
                    continue  # an unused output (requires checked it)
                end = node
                if tuple_kind[parent] in (WEIGHTED, OWN) and fuses_activations(parent.target):
                    end = fused_end(node)  # BatchNorm → relu: one quantizer after the chain
                if tuple_kind[parent] in (SHARED, ACTIVATION):
                    share_or_own(node, parent.args[0])
                elif end is node:
                    points[node] = act_spec(parent, node)
                    source[node] = node
                else:
                    chain_of[end] = _chain(node, end)
                    for n in chain_of[end][1:]:
                        fused_into[n] = end
            elif node in fused_into:
                if node is fused_into[node]:
                    points[node] = act_spec(*reversed(chain_of[node]))
                    source[node] = node
            elif kind in (WEIGHTED, OWN, "float"):
                end = fused_end(node) if kind != "float" and fuses_activations(node.target) else node
                chain_of[end] = _chain(node, end)
                for n in chain_of[end]:
                    fused_into[n] = end
                if end is node:
                    points[node] = act_spec(node)
                    source[node] = node
            elif kind in (SHARED, ACTIVATION):
                share_or_own(node, node.args[0])
            elif kind == PASSTHROUGH:
                src = source.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
                if src is not None:
                    source[node] = src

        observers = self._insert_observers(gm, points)
        weights = self._quantize_weights(gm, kinds, overrides)
        gm.meta[meta.SCHEME] = self.scheme
        gm.meta[meta.OVERRIDES] = {n.name: o for n, o in overrides.items()}
        return PassResult(gm, True, f"{observers} activation quantizers, {weights} weights quantized ({self.scheme.describe()})",
                          counts={"observers": observers, "weights": weights})

    def _insert_observers(self, gm: fx.GraphModule, points: dict) -> int:
        module_of: dict[fx.Node, str] = {}
        count = 0
        for node, spec in points.items():
            name = f"{meta.OBSERVER_PREFIX}{node.name}"
            if isinstance(spec, QuantSpec):
                module = ActivationObserver(spec, self.method, node.name)
                count += 1
            else:
                module = SharedQuantizer(module_of[spec])
            gm.add_submodule(name, module)
            module_of[node] = name
            users = [u for u in node.users if not (u.op == "call_module" and u.target == "_guards_fn")]
            anchor = node
            if node.op == "placeholder":  # observers go after the last placeholder
                anchor = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
            with gm.graph.inserting_after(anchor):
                obs = gm.graph.call_module(name, (node,))
            obs.meta[meta.VAL] = node.meta.get(meta.VAL)
            for user in users:
                user.replace_input_with(node, obs)
        return count

    def _quantize_weights(self, gm: fx.GraphModule, kinds: dict, overrides: dict) -> int:
        count = 0
        for node in list(gm.graph.nodes):
            if kinds.get(node) != WEIGHTED:
                continue
            view = layer_view(gm, node)
            if view is None:
                raise QCompilerError(f"{node_label(node)}: conv/linear weights must be constants to be quantized")
            o = overrides.get(node)
            spec = o.weights if o is not None and o.weights is not None else self.scheme.weights
            w = get_tensor(gm, view.weight_node).detach()
            method = self.weight_method or ("minmax" if spec.bits >= 8 else "mse")
            try:
                scales, zps = weight_qparams(w, spec, method)
            except QCompilerError as e:
                raise QCompilerError(f"{node_label(node)}: {e} (weight spec {spec.describe()})") from None
            q = quantize_weight(w, scales, zps, spec)
            _replace_weight(gm, node, q, scales, zps, spec, w)
            count += 1
        return count


def unsupported_error(problems: list[tuple[fx.Node, str]], scheme: QuantScheme) -> UnsupportedOpError:
    """One error for every node with no integer form: each with its op, where the model
    computes it, why, and the override that keeps it in float; then all the overrides at
    once (also on the error as ``.overrides``)."""
    lines = []
    for node, why in problems:
        where = source_location(node)
        where = f" {where}" if where.startswith("in ") else f" at {where}" if where else ""
        lines.append(f"  - {node_label(node)}{where}" + (f": {why}" if why else "")
                     + f"\n      keep it in float: overrides={{'{node.name}': 'float'}}")
    fix = {n.name: "float" for n, _ in problems}
    ops = sorted({op_name(n.target) for n, _ in problems})
    allowed = sorted(scheme.fallback_ops) or "none"
    return UnsupportedOpError(
        f"{len(problems)} node(s) have no integer form and the scheme does not let them fall back to float:\n"
        + "\n".join(lines)
        + f"\nTo keep all of them in float, pass quantize(..., overrides={fix!r})"
        + f"\nor let every node of these ops fall back: QuantScheme(fallback_ops=frozenset({{{', '.join(map(repr, ops))}}})) "
        + f"(the scheme's float fallback ops now: {allowed}).",
        overrides=fix)


def _root_spec(points: dict, node: fx.Node) -> QuantSpec:
    """The spec of the quantization point whose parameters ``node`` carries."""
    spec = points[node]
    while not isinstance(spec, QuantSpec):
        spec = points[spec]
    return spec


def _chain(start: fx.Node, end: fx.Node) -> list[fx.Node]:
    chain, node = [start], start
    while node is not end:
        node = single_user(node)
        chain.append(node)
    return chain


def weight_params(w: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor, spec: QuantSpec) -> QuantParams:
    """A weight's quantizer parameters (``weight_qparams``' scales) along ``spec.axis``."""
    axis = None if spec.granularity == "tensor" else spec.axis % w.dim()
    group = spec.group_size if spec.granularity == "group" else 1
    return QuantParams(scales, zps, spec.qmin, spec.qmax, spec.dtype, axis=axis, group_size=group)


def quantize_weight(w: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer weights, rounded to nearest (half to even) along ``spec.axis`` (groups
    expanded to their channels)."""
    params = weight_params(w, scales, zps, spec)
    shape = [1] * w.dim()
    if params.per_tensor:
        s, z = scales, zps
    else:
        shape[params.axis] = -1
        s, z = params.channel_scales(w.shape[params.axis])
    s = s.reshape(shape).to(w.dtype)
    z = z.reshape(shape).to(w.dtype)
    return torch.clamp(torch.round(w * (1.0 / s)) + z, spec.qmin, spec.qmax).to(spec.dtype)


def _replace_weight(gm: fx.GraphModule, node: fx.Node, q: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor,
                    spec: QuantSpec, float_weight: torch.Tensor) -> None:
    q_node = add_constant(gm, f"{node.name}_weight_int", q, before=node)
    dq = insert_dequantize(gm, q_node, weight_params(float_weight, scales, zps, spec), f"{node.name}_weight", before=node)
    dq.meta[meta.VAL] = float_weight
    old = node.args[1]
    node.replace_input_with(old, dq)
    if not old.users:
        gm.graph.erase_node(old)
    node.meta[meta.FLOAT_WEIGHT] = float_weight
    node.meta[meta.WEIGHT_SPEC] = spec
