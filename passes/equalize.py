"""equalize: cross-layer equalization (CLE) and high-bias absorption, after Nagel et al.,
"Data-Free Quantization Through Weight Equalization and Bias Correction" (2019) and the
white paper on neural network quantization (2021), section 4.

A *pair* is a conv/linear layer ``first`` whose only use reaches another conv/linear layer
``second`` through ops that commute with a positive per-channel scale ``s``:

    second(act(first(x))) = second'(act'(first'(x)))   with
    first'  : output channel i divided by s_i    (weights and bias)
    act'    : per-channel bounds divided by s_i  (relu, leaky_relu: unchanged;
              relu6/hardtanh/clamp become a per-channel clamp: clip(x/s, lo/s, hi/s) = clip(x, lo, hi)/s)
    second' : input channel i multiplied by s_i

s_i = sqrt(r1_i / r2_i) (r = max |w| of the channel) makes both ranges sqrt(r1_i·r2_i).
Pairs are equalized in sweeps until no scale moves by more than ``tol`` (log scale); chains
(conv → dw → conv) converge jointly.

High-bias absorption moves c_i out of ``first``'s output into ``second``'s bias. It is made
*exact* by shifting the activation's bounds too: clip(x − c, lo − c, hi − c) = clip(x, lo, hi) − c,
and second(y − c) = second(y) − W2·c when ``second`` does not pad (a zero pad of y − c is
not a pad of y). c_i is the point of the likely output interval [clip(β−3σ), clip(β+3σ)]
closest to 0, from the BatchNorm statistics fold_bn kept (β mean, σ std of the output).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.fx as fx

from qcompiler import meta
from qcompiler.graph import (LayerView, add_constant, aten, get_tensor, is_call, is_constant, layer_view,
                             output_shape, replace_all_uses, replace_constant_arg, single_user, tensor_arg)
from qcompiler.pass_manager import Pass, PassContext, PassResult, register_pass
from qcompiler.ops import CLAMP_BOUNDS, op_arg
from qcompiler.ops.pad import FIXED_MODE as PAD_MODES, mode_and_value as pad_mode_and_value

# ------------------------------------------------------------------ the pair search as rules
# A pair's path is found by walking from ``first`` through single users. Each op on the way
# is looked up in PATH_RULES, rows of (pattern, through): ``through(gm, node, rank, cdim)``
# says how a per-channel scale on channel dim ``cdim`` passes through the op (a _Step), or
# returns None to decline; the first row that matches and does not decline wins, and an op
# no row takes ends the walk (no pair). Rows compose by list concatenation.


@dataclass(frozen=True)
class OpPattern:
    """Matches a call_function node whose target is one of ``targets``."""

    targets: frozenset

    def matches(self, node: fx.Node) -> bool:
        return node.op == "call_function" and node.target in self.targets


def ops(*targets: Any) -> OpPattern:
    return OpPattern(frozenset(targets))


@dataclass(frozen=True)
class _Step:
    """How a per-channel scale s passes through one op of a pair's path."""

    kind: str  # "act" (bounds scale with s: a clamp), "scale_only" (commutes with s, not with a shift), "other"
    rank: int  # the op's output rank
    cdim: int  # the channel dim of its output
    shift_ok: bool  # also commutes with a per-channel shift (needed for high-bias absorption)
    bounds: Optional[tuple] = None  # "act": its (lo, hi), scalars or per-channel float64 vectors (None = unbounded)


Through = Callable[[fx.GraphModule, fx.Node, int, int], Optional[_Step]]


def _through_clamp(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> _Step:
    """relu, relu6, hardtanh, clamp: clip(x/s, lo/s, hi/s) = clip(x, lo, hi)/s."""
    return _Step("act", rank, cdim, True, CLAMP_BOUNDS[node.target](node))


def _through_tensor_clamp(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> Optional[_Step]:
    """A clamp with constant per-channel (or scalar) bounds along ``cdim``; declines any other."""
    bounds = _clamp_tensor_bounds(gm, node, rank, cdim)
    return None if bounds is None else _Step("act", rank, cdim, True, bounds)


def _through_scale_only(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> _Step:
    """leaky_relu: positively homogeneous, not shift-equivariant."""
    return _Step("scale_only", rank, cdim, False)


def _through_identity(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> _Step:
    return _Step("other", rank, cdim, True)


def _through_zero_pad(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> Optional[_Step]:
    """A zero pad of the spatial dims only: pad(x/s, 0) = pad(x, 0)/s, but pad(x − c, 0) ≠ pad(x, 0) − c."""
    pad, value = node.args[1], op_arg(node, 2, "value", 0.0)
    if value != 0 or rank - len(pad) // 2 <= cdim:
        return None
    return _Step("other", rank, cdim, False)


def _through_pad(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> Optional[_Step]:
    """aten.pad (and the one-mode padding ops) of dims after the channel dim: by zero, as a
    zero pad; reflect/replicate/circular copy values, so they commute with a shift too."""
    mode, value = pad_mode_and_value(node)
    if rank - len(node.args[1]) // 2 <= cdim or (mode == "constant" and value != 0):
        return None
    return _Step("other", rank, cdim, mode != "constant")


def _through_mean(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> Optional[_Step]:
    """A mean over dims other than the batch and the channel dim."""
    dims = [d % rank for d in node.args[1]]
    if cdim in dims or 0 in dims:
        return None
    if op_arg(node, 2, "keepdim", False):
        return _Step("other", rank, cdim, True)
    return _Step("other", rank - len(dims), cdim - sum(d < cdim for d in dims), True)


def _through_pool(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> Optional[_Step]:
    """An average pool over NCHW's spatial dims; padding counted in a divisor, or a
    divisor_override, breaks shift-equivariance (a divisor that is each window's count of
    input elements keeps it: adaptive pooling, count_include_pad=False)."""
    if cdim != rank - 3:
        return None
    shift_ok = node.target != aten.avg_pool2d.default or (
        not op_arg(node, 6, "divisor_override", None)
        and (not op_arg(node, 5, "count_include_pad", True) or not any(op_arg(node, 3, "padding", [0]) or [0])))
    return _Step("other", rank, cdim, shift_ok)


def _through_flatten(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> Optional[_Step]:
    """A view/reshape of [N, C, 1, ..., 1] to [N, C]."""
    before, after = output_shape(node.args[0]), output_shape(node)
    if before is None or after is None or cdim != 1:
        return None
    if len(after) == 2 and after[1] == before[1] and all(d == 1 for d in before[2:]):
        return _Step("other", 2, 1, True)
    return None


ACTIVATION_RULES: list[tuple[OpPattern, Through]] = [
    (ops(*CLAMP_BOUNDS), _through_clamp),  # clamp-like activations and their bounds: qcompiler.ops.CLAMP_BOUNDS
    (ops(aten.clamp.Tensor), _through_tensor_clamp),
    (ops(aten.leaky_relu.default), _through_scale_only),
]
LAYOUT_RULES: list[tuple[OpPattern, Through]] = [
    (ops(aten.clone.default, aten.alias.default, aten.detach.default), _through_identity),
    (ops(aten.constant_pad_nd.default), _through_zero_pad),
    (ops(aten.pad.default, *PAD_MODES), _through_pad),
    (ops(aten.mean.dim), _through_mean),
    (ops(aten.avg_pool2d.default, aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default), _through_pool),
    (ops(aten.view.default, aten.reshape.default, aten._unsafe_view.default), _through_flatten),
]
PATH_RULES: list[tuple[OpPattern, Through]] = ACTIVATION_RULES + LAYOUT_RULES


def apply_rules(rules: list[tuple[OpPattern, Through]], gm: fx.GraphModule, node: fx.Node, rank: int,
                cdim: int) -> Optional[_Step]:
    """The step of the first row of ``rules`` that matches ``node`` and does not decline; None if none."""
    for pattern, through in rules:
        if pattern.matches(node):
            step = through(gm, node, rank, cdim)
            if step is not None:
                return step
    return None


# ------------------------------------------------------------------ pairs


@dataclass
class _PathOp:
    node: fx.Node
    kind: str  # "act", "scale_only", "other"
    rank: int
    cdim: int
    bounds: Optional[tuple] = None  # "act": its (lo, hi) before equalization


@dataclass
class _Pair:
    first: LayerView
    second: LayerView
    path: list[_PathOp]
    hba_ok: bool


def _clamp_tensor_bounds(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int):
    """Per-channel (lo, hi) float64 vectors of a clamp.Tensor whose bounds are constants
    broadcasting along ``cdim`` only; None if they are anything else."""
    out = []
    for idx in (1, 2):
        arg = op_arg(node, idx, "min" if idx == 1 else "max", None)
        if arg is None:
            out.append(None)
            continue
        if not is_constant(arg):
            return None
        t = get_tensor(gm, arg).double()
        expected_trailing = rank - 1 - cdim
        if t.dim() > rank - cdim or any(s != 1 for s in t.shape[1:]) or t.dim() - 1 != expected_trailing:
            if t.numel() == 1:
                out.append(t.reshape(()))
                continue
            return None
        out.append(t.reshape(-1))
    return tuple(out)


def _find_pair(gm: fx.GraphModule, first: LayerView) -> Optional[_Pair]:
    """The pair ``first`` starts: its single-use path through PATH_RULES' ops to the next
    conv/linear, whose input channels must be ``first``'s output channels; None if there is none."""
    shape = output_shape(first.node)
    if shape is None:
        return None
    rank = len(shape)
    cdim = 1 if first.kind == "conv" else rank - 1
    node, path, hba_ok = first.node, [], True
    while True:
        user = single_user(node)
        if user is None or not user.args or user.args[0] is not node:
            return None
        second = layer_view(gm, user)
        if second is not None:
            expected = 1 if second.kind == "conv" else rank - 1
            if cdim != expected or second.in_channels != first.out_channels:
                return None
            no_pad = all(isinstance(p, int) and p == 0 for p in second.padding())  # second(y − c) = second(y) − W·c
            return _Pair(first, second, path, hba_ok and no_pad)
        step = apply_rules(PATH_RULES, gm, user, rank, cdim)
        if step is None:
            return None
        path.append(_PathOp(user, step.kind, rank, cdim, step.bounds))
        hba_ok = hba_ok and step.shift_ok
        node, rank, cdim = user, step.rank, step.cdim


# ------------------------------------------------------------------ channel algebra on [out, in/groups, *k]

def _out_ranges(w: torch.Tensor) -> torch.Tensor:
    return w.abs().reshape(w.shape[0], -1).amax(dim=1)


def _grouped(w: torch.Tensor, groups: int) -> torch.Tensor:
    """[out, in/g, *k] → [g, out/g, in/g, k]: input channel c = gi·(in/g) + ci."""
    return w.reshape(groups, w.shape[0] // groups, w.shape[1], -1)


def _in_ranges(w: torch.Tensor, groups: int) -> torch.Tensor:
    return _grouped(w.abs(), groups).amax(dim=(1, 3)).reshape(-1)


def _scale_in(w: torch.Tensor, groups: int, s: torch.Tensor) -> torch.Tensor:
    g = _grouped(w, groups) * s.reshape(groups, 1, -1, 1)
    return g.reshape(w.shape)


def _absorb_in(w: torch.Tensor, groups: int, c: torch.Tensor) -> torch.Tensor:
    """W·c: what ``second`` adds to each output when every input channel i is shifted by c_i."""
    return (_grouped(w, groups) * c.reshape(groups, 1, -1, 1)).sum(dim=(2, 3)).reshape(-1)


def _safe_scale(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """sqrt(r1/r2), and 1 where either range is zero or negligible (a dead channel)."""
    tiny1 = 1e-12 * max(float(r1.max()), 1e-30)
    tiny2 = 1e-12 * max(float(r2.max()), 1e-30)
    ok = (r1 > tiny1) & (r2 > tiny2)
    s = torch.ones_like(r1)
    s[ok] = torch.sqrt(r1[ok] / r2[ok])
    return s


# ------------------------------------------------------------------ the pass


@dataclass
class _State:
    weight: dict = field(default_factory=dict)  # node -> float64 weight
    bias: dict = field(default_factory=dict)  # node -> float64 bias [out]
    bounds: dict = field(default_factory=dict)  # act node -> [lo, hi] per-channel float64 (None = unbounded)
    stats: dict = field(default_factory=dict)  # node -> {"mean", "std"}
    original_bounds: dict = field(default_factory=dict)  # act node -> its bounds before any rewrite


@register_pass(after=["fold_bn"])
class Equalize(Pass):
    """Cross-layer equalization through ReLU-like activations (relu, relu6, hardtanh, clamp,
    per-channel clamp, leaky_relu; also through zero pads, spatial means, average pools and
    flattening to [N, C]), including depthwise-separable chains, iterated to convergence,
    followed by exact high-bias absorption.

    Preserves the function up to float rounding: every rewrite is an identity in exact
    arithmetic (scales are positive; relu6 and clamps become per-channel clamps with scaled
    and shifted bounds), computed in float64 and rounded once to float32. Relative error
    stays below 1e-4 of the output's max magnitude (EfficientNet-Lite0: ~1e-6). Dead
    channels (all-zero weights, unused inputs) keep scale 1: nothing divides by zero.
    Layers whose output has several users, or that reach the next layer through other ops,
    are left alone.

    Options: ``absorb_bias`` (default True), ``max_sweeps`` (100), ``tol`` (1e-4 in log-scale).
    Which ops a pair's path may cross is data: PATH_RULES (this module).
    Requires nothing beyond a graph; reads ``meta.BN_STATS`` (fold_bn) for the absorption.
    Counts: ``layers``, ``pairs``, ``sweeps``, ``changed_layers``, ``absorbed`` (the pairs
    themselves: ``ctx.notes["equalize"]``).
    """

    preserves = "function_up_to_fp"
    tolerance = 1e-4

    def __init__(self, absorb_bias: bool = True, max_sweeps: int = 100, tol: float = 1e-4):
        self.absorb_bias = absorb_bias
        self.max_sweeps = max_sweeps
        self.tol = tol

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = [v for v in (layer_view(gm, n) for n in gm.graph.nodes) if v is not None]
        pairs = [p for p in (_find_pair(gm, v) for v in layers) if p is not None]
        if not pairs:
            ctx.notes["equalize"] = {"pairs": [], "sweeps": 0, "absorbed": []}
            return PassResult(gm, False, f"no equalizable pairs among {len(layers)} layers",
                              counts={"layers": len(layers), "pairs": 0, "sweeps": 0, "changed_layers": 0, "absorbed": 0})
        state = self._load(gm, pairs)
        sweeps = self._equalize(pairs, state)
        absorbed = self._absorb_high_bias(pairs, state) if self.absorb_bias else []
        changed = self._write_back(gm, pairs, state)
        names = lambda ps: [(p.first.node.name, p.second.node.name) for p in ps]
        ctx.notes["equalize"] = {"pairs": names(pairs), "sweeps": sweeps, "absorbed": names(absorbed)}
        return PassResult(
            gm, changed > 0,
            f"{len(pairs)} pairs, {sweeps} sweeps; changed {changed} of {len(layers)} layers; "
            f"high bias absorbed in {len(absorbed)} pairs",
            counts={"layers": len(layers), "pairs": len(pairs), "sweeps": sweeps, "changed_layers": changed,
                    "absorbed": len(absorbed)},
        )

    # -- state -----------------------------------------------------------------------
    def _load(self, gm: fx.GraphModule, pairs: list[_Pair]) -> _State:
        st = _State()
        for p in pairs:
            for layer in (p.first, p.second):
                if layer.node not in st.weight:
                    st.weight[layer.node] = tensor_arg(gm, layer.node, 1).double()
                    b = tensor_arg(gm, layer.node, 2)
                    st.bias[layer.node] = torch.zeros(layer.out_channels, dtype=torch.float64) if b is None else b.double()
            stats = p.first.node.meta.get(meta.BN_STATS)
            if stats is not None:
                st.stats[p.first.node] = {k: v.double().clone() for k, v in stats.items()}
            channels = p.first.out_channels
            for op in p.path:
                if op.kind != "act":
                    continue
                lo, hi = op.bounds
                st.bounds[op.node] = [None if v is None else torch.as_tensor(v, dtype=torch.float64).expand(channels).clone()
                                      for v in (lo, hi)]
        st.original_bounds = {n: [None if v is None else v.clone() for v in b] for n, b in st.bounds.items()}
        return st

    # -- CLE -------------------------------------------------------------------------
    def _equalize(self, pairs: list[_Pair], st: _State) -> int:
        for sweep in range(1, self.max_sweeps + 1):
            worst = 0.0
            for p in pairs:
                w1, w2 = st.weight[p.first.node], st.weight[p.second.node]
                s = _safe_scale(_out_ranges(w1), _in_ranges(w2, p.second.groups))
                self._apply_scale(p, st, s)
                worst = max(worst, float(s.log().abs().max()))
            if worst < self.tol:
                return sweep
        return self.max_sweeps

    @staticmethod
    def _apply_scale(p: _Pair, st: _State, s: torch.Tensor) -> None:
        first, second = p.first.node, p.second.node
        st.weight[first] = st.weight[first] / s.reshape(-1, *([1] * (st.weight[first].dim() - 1)))
        st.bias[first] = st.bias[first] / s
        st.weight[second] = _scale_in(st.weight[second], p.second.groups, s)
        for op in p.path:
            if op.node in st.bounds:
                st.bounds[op.node] = [None if v is None else v / s for v in st.bounds[op.node]]
        if first in st.stats:
            st.stats[first] = {k: v / s for k, v in st.stats[first].items()}

    # -- high-bias absorption ----------------------------------------------------------
    def _absorb_high_bias(self, pairs: list[_Pair], st: _State) -> list[_Pair]:
        absorbed = []
        for p in pairs:
            stats = st.stats.get(p.first.node)
            acts = [op.node for op in p.path if op.kind == "act"]
            if stats is None or not p.hba_ok or len(acts) > 1:
                continue
            lo, hi = st.bounds[acts[0]] if acts else (None, None)
            low = self._clip(stats["mean"] - 3 * stats["std"], lo, hi)
            high = self._clip(stats["mean"] + 3 * stats["std"], lo, hi)
            c = torch.minimum(torch.maximum(torch.zeros_like(low), low), high)  # point of [low, high] nearest 0
            if not torch.any(c != 0):
                continue
            st.bias[p.first.node] = st.bias[p.first.node] - c
            stats["mean"] = stats["mean"] - c
            for node in acts:
                st.bounds[node] = [None if v is None else v - c for v in st.bounds[node]]
            st.bias[p.second.node] = st.bias[p.second.node] + _absorb_in(st.weight[p.second.node], p.second.groups, c)
            absorbed.append(p)
        return absorbed

    @staticmethod
    def _clip(x: torch.Tensor, lo, hi) -> torch.Tensor:
        if lo is not None:
            x = torch.maximum(x, lo)
        if hi is not None:
            x = torch.minimum(x, hi)
        return x

    # -- write back ---------------------------------------------------------------------
    def _write_back(self, gm: fx.GraphModule, pairs: list[_Pair], st: _State) -> int:
        changed = 0
        for node, w in st.weight.items():
            old_w = tensor_arg(gm, node, 1)
            old_b = tensor_arg(gm, node, 2)
            new_w, new_b = w.float(), st.bias[node].float()
            same_b = torch.equal(new_b, old_b) if old_b is not None else not torch.any(new_b != 0)
            if torch.equal(new_w, old_w) and same_b:
                continue
            changed += 1
            replace_constant_arg(gm, node, 1, new_w, f"{node.name}_weight_eq")
            if not same_b:
                replace_constant_arg(gm, node, 2, new_b, f"{node.name}_bias_eq")
        for node, stats in st.stats.items():
            node.meta[meta.BN_STATS] = stats
        by_act = {op.node: op for p in pairs for op in p.path if op.node in st.bounds}
        for act, bounds in st.bounds.items():
            original = st.original_bounds[act]
            if all((a is None and b is None) or (a is not None and b is not None and torch.equal(a.float(), b.float()))
                   for a, b in zip(bounds, original)):
                continue
            self._to_per_channel_clamp(gm, by_act[act], bounds)
        return changed

    @staticmethod
    def _to_per_channel_clamp(gm: fx.GraphModule, op: _PathOp, bounds: list) -> None:
        shape = [-1] + [1] * (op.rank - 1 - op.cdim)
        act = op.node
        args = [act.args[0]]
        for value, hint in zip(bounds, ("clamp_lo", "clamp_hi")):
            args.append(None if value is None else add_constant(gm, f"{act.name}_{hint}", value.float().reshape(shape), before=act))
        with gm.graph.inserting_before(act):
            clamp = gm.graph.call_function(aten.clamp.Tensor, tuple(args))
        clamp.meta = dict(act.meta)
        replace_all_uses(act, clamp)
        gm.graph.erase_node(act)
