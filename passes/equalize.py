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
from typing import Optional

import torch
import torch.fx as fx

from qcompiler.graph import (LayerView, add_constant, aten, get_tensor, is_call, is_constant, layer_view,
                             output_shape, replace_all_uses, replace_constant_arg, single_user, tensor_arg)
from qcompiler.pass_manager import Pass, PassContext, PassResult, register_pass
from qcompiler.quant_ops import CLAMP_BOUNDS, op_arg

# ------------------------------------------------------------------ activations as data
# Clamp-like activations and their bounds: qcompiler.quant_ops.CLAMP_BOUNDS.
_SCALE_ONLY_ACTIVATIONS = {aten.leaky_relu.default}  # positively homogeneous, not shift-equivariant
_IDENTITY_OPS = {aten.clone.default, aten.alias.default, aten.detach.default}
_RESHAPE_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_POOL_OPS = {aten.avg_pool2d.default, aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default}


# ------------------------------------------------------------------ pairs


@dataclass
class _PathOp:
    node: fx.Node
    kind: str  # "act", "scale_only", "other"
    rank: int
    cdim: int


@dataclass
class _Pair:
    first: LayerView
    second: LayerView
    path: list[_PathOp]
    hba_ok: bool


def _step(gm: fx.GraphModule, node: fx.Node, rank: int, cdim: int) -> Optional[tuple[str, int, int, bool]]:
    """If ``node`` commutes with a per-channel scale on channel dim ``cdim``: (kind, rank,
    cdim after it, commutes with a per-channel shift too). Else None."""
    t = node.target
    if node.op != "call_function":
        return None
    if t in CLAMP_BOUNDS or t == aten.clamp.Tensor:
        if t == aten.clamp.Tensor and _clamp_tensor_bounds(gm, node, rank, cdim) is None:
            return None
        return "act", rank, cdim, True
    if t in _SCALE_ONLY_ACTIVATIONS:
        return "scale_only", rank, cdim, False
    if t in _IDENTITY_OPS:
        return "other", rank, cdim, True
    if t == aten.constant_pad_nd.default:
        pad, value = node.args[1], op_arg(node, 2, "value", 0.0)
        if value != 0 or rank - len(pad) // 2 <= cdim:
            return None
        return "other", rank, cdim, False  # pad(x - c, 0) != pad(x, 0) - c
    if t == aten.mean.dim:
        dims = [d % rank for d in node.args[1]]
        keepdim = bool(op_arg(node, 2, "keepdim", False))
        if cdim in dims or 0 in dims:
            return None
        if keepdim:
            return "other", rank, cdim, True
        return "other", rank - len(dims), cdim - sum(d < cdim for d in dims), True
    if t in _POOL_OPS:
        if cdim != rank - 3:
            return None
        shift_ok = t != aten.avg_pool2d.default or not any(op_arg(node, 3, "padding", [0]) or [0])
        return "other", rank, cdim, shift_ok
    if t in _RESHAPE_OPS:
        before, after = output_shape(node.args[0]), output_shape(node)
        if before is None or after is None or cdim != 1:
            return None
        channels = before[1]
        if len(after) == 2 and after[1] == channels and all(d == 1 for d in before[2:]):
            return "other", 2, 1, True
        return None
    return None


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
            pads = second.padding()
            if not all(isinstance(p, int) and p == 0 for p in pads):
                hba_ok = False
            return _Pair(first, second, path, hba_ok)
        step = _step(gm, user, rank, cdim)
        if step is None:
            return None
        kind, new_rank, new_cdim, shift_ok = step
        path.append(_PathOp(user, kind, rank, cdim))
        hba_ok = hba_ok and shift_ok
        node, rank, cdim = user, new_rank, new_cdim


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
            return PassResult(gm, False, f"no equalizable pairs among {len(layers)} layers")
        state = self._load(gm, pairs)
        sweeps = self._equalize(pairs, state)
        absorbed = self._absorb_high_bias(pairs, state) if self.absorb_bias else 0
        changed = self._write_back(gm, pairs, state)
        ctx.notes["equalize"] = {"pairs": [(p.first.node.name, p.second.node.name) for p in pairs], "sweeps": sweeps}
        return PassResult(
            gm, changed > 0,
            f"{len(pairs)} pairs, {sweeps} sweeps; changed {changed} of {len(layers)} layers; "
            f"high bias absorbed in {absorbed} pairs",
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
            stats = p.first.node.meta.get("bn_stats")
            if stats is not None:
                st.stats[p.first.node] = {k: v.double().clone() for k, v in stats.items()}
            channels = p.first.out_channels
            for op in p.path:
                if op.kind != "act":
                    continue
                if op.node.target == aten.clamp.Tensor:
                    lo, hi = _clamp_tensor_bounds(gm, op.node, op.rank, op.cdim)
                else:
                    lo, hi = CLAMP_BOUNDS[op.node.target](op.node)
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
    def _absorb_high_bias(self, pairs: list[_Pair], st: _State) -> int:
        absorbed = 0
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
            absorbed += 1
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
            node.meta["bn_stats"] = stats
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
