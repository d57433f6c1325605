"""Property testing for passes: hypothesis strategies that build random float models, and
``assert_preserves``, which checks that a pass keeps the function it declares it keeps.

    from qcompiler.testing import assert_preserves, float_models, given

    @given(float_models())
    def test_my_pass(case):
        assert_preserves("my_pass", case.model, case.inputs)

``given`` is hypothesis's ``given`` with qcompiler's settings (``SETTINGS``): no deadline
(capturing a model and running a pass takes one to three seconds), ``QCOMPILER_EXAMPLES`` examples (200
by default), derandomized unless ``QCOMPILER_RANDOM`` is set. It works wherever the test
runs, with no conftest. A ``@settings(...)`` below ``@given`` replaces them for that test
(derive it from ``SETTINGS`` to keep no deadline: ``@settings(SETTINGS, max_examples=30)``).

The models mix conv (any kernel, stride, padding, dilation; depthwise and grouped; with or
without bias), BatchNorm, relu/relu6/hardswish/clamp, residual add, concat, avg/max pool
(ceil_mode, count_include_pad, adaptive sizes), zero/reflect/replicate/circular padding,
bilinear and nearest-exact upsampling, flatten and linear, with weights whose channel ranges
differ by orders of magnitude and, sometimes, dead (all-zero) channels.
"""
from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import hypothesis
import torch
import torch.fx as fx
import torch.nn as nn
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from torch.utils._pytree import tree_leaves

from .capture import capture
from .graph import clone_graph
from .ops.numeric import pool_output_size
from .pass_manager import PassLike, PassManager, PassManagerResult, get_pass, output_error
from .op_check import OpCheck, check_op  # noqa: F401  (qcompiler.testing.check_op: docs/custom-op.md)
from .verify import count_ops

EXAMPLES = int(os.environ.get("QCOMPILER_EXAMPLES", "200"))

# qcompiler's hypothesis settings: what ``given`` applies, and the "qcompiler" profile.
# The "explain" phase (which lines only failing examples ran) re-runs a failing model many
# times, minutes for compile-heavy properties, and says little about a pass: left out.
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("QCOMPILER_RANDOM") is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True,
    phases=[p for p in Phase if p != Phase.explain],
)
settings.register_profile("qcompiler", SETTINGS)


def given(*strategies: Any, **named: Any) -> Any:
    """``hypothesis.given`` with qcompiler's ``SETTINGS`` (no deadline, ``QCOMPILER_EXAMPLES``
    examples), unless the test carries its own ``@settings`` (placed below ``@given``)."""
    def decorate(test: Any) -> Any:
        wrapped = hypothesis.given(*strategies, **named)(test)
        if getattr(test, "_hypothesis_internal_settings_applied", False):  # the user's own @settings win
            return wrapped
        return SETTINGS(wrapped)

    return decorate

ACTIVATIONS = ("relu", "relu6", "hardswish", "clamp", "leaky_relu")


def _activation(kind: str, lo: float = -1.0, hi: float = 1.0) -> nn.Module:
    return {
        "relu": lambda: nn.ReLU(),
        "relu6": lambda: nn.ReLU6(),
        "hardswish": lambda: nn.Hardswish(),
        "clamp": lambda: nn.Hardtanh(lo, hi),
        "leaky_relu": lambda: nn.LeakyReLU(0.1),
    }[kind]()


# ------------------------------------------------------------------ the generated model


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Concat(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class Gate(nn.Module):
    """x · sigmoid(conv1x1(x)): squeeze-excitation style gating (mul + a table op)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return x * torch.sigmoid(self.conv(x))


class Difference(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x - self.body(x)


class ZeroPad(nn.Module):
    def __init__(self, pad: tuple):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return torch.nn.functional.pad(x, self.pad)


class ModePad(nn.Module):
    def __init__(self, pad: tuple, mode: str):
        super().__init__()
        self.pad, self.mode = pad, mode

    def forward(self, x):
        return torch.nn.functional.pad(x, self.pad, mode=self.mode)


class ChannelGram(nn.Module):
    """[N, C, H, W] → [N, 1, C, C]: channel-by-channel products (a matmul of activations)."""

    def forward(self, x):
        a = x.flatten(2)
        return torch.matmul(a, a.transpose(1, 2)).unsqueeze(1) / a.shape[-1]


class Flatten(nn.Module):
    def forward(self, x):
        return torch.flatten(x, 1)


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


@dataclass
class ModelCase:
    """A generated float model, example inputs for it, and the spec it was built from."""

    model: nn.Module
    inputs: tuple
    spec: list = field(default_factory=list)

    def __repr__(self) -> str:
        shape = tuple(self.inputs[0].shape)
        return f"ModelCase(input {shape}, layers: {' → '.join(self.spec)})"


def _init_conv(conv: nn.Module, gen: torch.Generator, dead: bool, spread: float) -> None:
    """Weights N(0, 1/fan_in) times a per-output-channel factor in [1/spread, spread]
    (imbalanced channels, as BN folding creates); optionally one dead channel."""
    w = conv.weight
    fan_in = max(1, w[0].numel())
    factors = torch.exp(torch.empty(w.shape[0]).uniform_(-1, 1, generator=gen) * torch.log(torch.tensor(spread)))
    with torch.no_grad():
        w.copy_(torch.randn(w.shape, generator=gen) / fan_in ** 0.5 * factors.view(-1, *([1] * (w.dim() - 1))))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.5)
        if dead and w.shape[0] > 1:
            w[int(torch.randint(w.shape[0], (1,), generator=gen))] = 0


def _init_bn(bn: nn.Module, gen: torch.Generator) -> None:
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
        bn.running_var.copy_(torch.empty(c).uniform_(0.05, 3.0, generator=gen))
        if bn.affine:
            sign = torch.where(torch.rand(c, generator=gen) < 0.1, -1.0, 1.0)
            bn.weight.copy_(sign * torch.empty(c).uniform_(0.1, 2.0, generator=gen))
            bn.bias.copy_(torch.randn(c, generator=gen) * 1.5)


@st.composite
def _conv_spec(draw, c_in: int, h: int, w: int, allow_stride: bool = True) -> dict:
    k = draw(st.sampled_from([1, 3, 5] if min(h, w) >= 5 else [1, 3] if min(h, w) >= 3 else [1]))
    dilation = draw(st.sampled_from([1, 2])) if k > 1 and min(h, w) >= 2 * (k - 1) + 1 else 1
    padding = draw(st.integers(0, k // 2 * dilation))
    stride = draw(st.sampled_from([1, 2])) if allow_stride else 1
    kind = draw(st.sampled_from(["dense", "depthwise", "grouped"]))
    if kind == "depthwise":
        groups, c_out = c_in, c_in * draw(st.sampled_from([1, 1, 2]))
    elif kind == "grouped" and c_in % 2 == 0 and c_in >= 2:
        groups, c_out = 2, 2 * draw(st.integers(1, 4))
    else:
        groups, c_out = 1, draw(st.integers(1, 8))
    return dict(k=k, dilation=dilation, padding=padding, stride=stride, groups=groups, c_out=c_out,
                bias=draw(st.booleans()), dead=draw(st.integers(0, 9)) == 0, spread=draw(st.sampled_from([1.0, 10.0, 100.0])))


def _out_size(n: int, s: dict) -> int:
    return (n + 2 * s["padding"] - s["dilation"] * (s["k"] - 1) - 1) // s["stride"] + 1


@st.composite
def _pool_spec(draw, h: int, w: int) -> tuple:
    """(pool module, h, w after it, description): average or max pooling of kernel 2 or 3,
    stride 2, padding up to k//2, ceil_mode and count_include_pad drawn; or adaptive average
    or max pooling to a size drawn up to the input's."""
    kind = draw(st.sampled_from(["avg", "avg", "max", "max", "adaptiveavg", "adaptivemax"]))
    if kind.startswith("adaptive"):
        size = (draw(st.integers(1, h)), draw(st.integers(1, w)))
        pool = nn.AdaptiveAvgPool2d(size) if kind == "adaptiveavg" else nn.AdaptiveMaxPool2d(size)
        return pool, size[0], size[1], f"{kind}pool{size}"
    k = draw(st.sampled_from([2, 3])) if min(h, w) >= 3 else 2
    p, ceil = draw(st.integers(0, k // 2)), draw(st.booleans())
    if kind == "avg":
        include_pad = draw(st.booleans())
        pool = nn.AvgPool2d(k, 2, p, ceil_mode=ceil, count_include_pad=include_pad)
        desc = f"avgpool{k}(s=2,p={p},ceil={ceil},count_pad={include_pad})"
    else:
        pool, desc = nn.MaxPool2d(k, 2, p, ceil_mode=ceil), f"maxpool{k}(s=2,p={p},ceil={ceil})"
    return pool, pool_output_size(h, k, p, 2, 1, ceil), pool_output_size(w, k, p, 2, 1, ceil), desc


@st.composite
def float_models(draw, max_blocks: int = 5, activations: Sequence[str] = ACTIVATIONS, batch: Optional[int] = None) -> ModelCase:
    """A strategy for ModelCase: a random CNN (and optional MLP head) with random weights."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n = batch if batch is not None else draw(st.integers(1, 2))
    c, h, w = draw(st.integers(1, 6)), draw(st.integers(4, 12)), draw(st.integers(4, 12))
    inputs = (torch.randn(n, c, h, w, generator=gen) * draw(st.sampled_from([0.5, 1.0, 3.0])),)
    layers: list[nn.Module] = []
    spec: list[str] = []

    def conv_bn_act(c_in: int, h_: int, w_: int, same_shape: bool = False):
        s = draw(_conv_spec(c_in, h_, w_, allow_stride=not same_shape))
        if same_shape:  # keep shape: odd kernel, 'same' padding, no channel change
            s.update(stride=1, padding=s["k"] // 2 * s["dilation"], c_out=c_in, groups=draw(st.sampled_from([1, c_in])))
        conv = nn.Conv2d(c_in, s["c_out"], s["k"], s["stride"], s["padding"], s["dilation"], s["groups"], bias=s["bias"])
        _init_conv(conv, gen, s["dead"], s["spread"])
        mods: list[nn.Module] = [conv]
        desc = [f"conv{s['k']}x{s['k']}(g={s['groups']},s={s['stride']},p={s['padding']},d={s['dilation']},{c_in}->{s['c_out']})"]
        if draw(st.integers(0, 3)) > 0:
            bn = nn.BatchNorm2d(s["c_out"], affine=draw(st.integers(0, 4)) > 0)
            _init_bn(bn, gen)
            mods.append(bn)
            desc.append("bn")
        if draw(st.integers(0, 3)) > 0:
            kind = draw(st.sampled_from(list(activations)))
            lo = draw(st.sampled_from([-1.0, 0.0, 0.5]))
            mods.append(_activation(kind, lo, lo + draw(st.sampled_from([1.0, 4.0]))))
            desc.append(kind)
        return nn.Sequential(*mods), s["c_out"], _out_size(h_, s), _out_size(w_, s), "+".join(desc)

    for _ in range(draw(st.integers(1, max_blocks))):
        choice = draw(st.sampled_from(["conv", "conv", "separable", "residual", "concat", "pool", "gate", "difference", "pad", "gram",
                                       "pad_mode", "upsample"]))
        if choice == "pool" and min(h, w) >= 2:
            pool, h, w, desc = draw(_pool_spec(h, w))
            layers.append(pool)
            spec.append(desc)
        elif choice == "gate":
            conv = nn.Conv2d(c, c, 1)
            _init_conv(conv, gen, False, 1.0)
            layers.append(Gate(conv))
            spec.append("gate(x*sigmoid(conv1x1))")
        elif choice == "pad":
            pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
            layers.append(ZeroPad(pad))
            h, w = h + pad[2] + pad[3], w + pad[0] + pad[1]
            spec.append(f"pad{pad}")
        elif choice == "pad_mode":  # reflect / replicate / circular padding (a gather of codes)
            mode = draw(st.sampled_from(["reflect", "replicate", "circular"]))
            pad = tuple(draw(st.integers(0, min(2, (w if i < 2 else h) - 1))) for i in range(4))
            layers.append(ModePad(pad, mode))
            h, w = h + pad[2] + pad[3], w + pad[0] + pad[1]
            spec.append(f"pad{pad}({mode})")
        elif choice == "upsample" and h * w <= 64:  # bilinear (fixed-point weights) or nearest-exact
            mode = draw(st.sampled_from(["bilinear", "bilinear", "nearest-exact"]))
            factor = draw(st.sampled_from([2.0, 1.5]))
            align = draw(st.booleans()) if mode == "bilinear" else None
            layers.append(nn.Upsample(scale_factor=factor, mode=mode, align_corners=align))
            h, w = int(h * factor), int(w * factor)
            spec.append(f"upsample({mode},x{factor}" + (",align_corners)" if align else ")"))
        elif choice == "gram" and c >= 2 and h * w <= 64:
            layers.append(ChannelGram())
            c, h, w = 1, c, c
            spec.append("gram(matmul)")
        elif choice in ("residual", "difference"):  # x + f(x) or x - f(x), f keeping the shape
            body, _, _, _, desc = conv_bn_act(c, h, w, same_shape=True)
            layers.append(Residual(body) if choice == "residual" else Difference(body))
            spec.append(f"{choice}({desc})")
        elif choice == "concat":
            a, ca, ha, wa, da = conv_bn_act(c, h, w, same_shape=True)
            b, cb, _, _, db = conv_bn_act(c, h, w, same_shape=True)
            layers.append(Concat(a, b))
            c = ca + cb
            spec.append(f"concat({da} | {db})")
        elif choice == "separable":
            mult = draw(st.sampled_from([1, 2, 3]))
            expand = nn.Conv2d(c, c * mult, 1, bias=False)
            dw = nn.Conv2d(c * mult, c * mult, 3, 1, 1, groups=c * mult, bias=False)
            c_out = draw(st.integers(1, 8))
            project = nn.Conv2d(c * mult, c_out, 1, bias=False)
            mods = []
            for conv in (expand, dw, project):
                _init_conv(conv, gen, draw(st.integers(0, 9)) == 0, draw(st.sampled_from([1.0, 10.0, 100.0])))
                bn = nn.BatchNorm2d(conv.out_channels)
                _init_bn(bn, gen)
                mods += [conv, bn] + ([nn.ReLU6()] if conv is not project else [])
            layers.append(nn.Sequential(*mods))
            spec.append(f"separable({c}->{c * mult}->dw->{c_out})")
            c = c_out
        else:
            block, c, h, w, desc = conv_bn_act(c, h, w)
            layers.append(block)
            spec.append(desc)
        if min(h, w) < 1:
            break
    if draw(st.booleans()):
        if draw(st.booleans()):
            layers.append(GlobalAvgPool())
            features = c
            spec.append("mean")
        else:
            layers.append(Flatten())
            features = c * h * w
            spec.append("flatten")
        for _ in range(draw(st.integers(1, 2))):
            out = draw(st.integers(1, 10))
            lin = nn.Linear(features, out, bias=draw(st.booleans()))
            _init_conv(lin, gen, draw(st.integers(0, 9)) == 0, draw(st.sampled_from([1.0, 10.0])))
            layers.append(lin)
            spec.append(f"linear({features}->{out})")
            if draw(st.booleans()):
                bn = nn.BatchNorm1d(out)
                _init_bn(bn, gen)
                layers.append(bn)
                spec.append("bn1d")
            if draw(st.booleans()):
                kind = draw(st.sampled_from(list(activations)))
                layers.append(_activation(kind, -1.0, 3.0))
                spec.append(kind)
            if draw(st.integers(0, 3)) == 0:
                layers.append(nn.Dropout(0.5))  # eval mode: an identity (a clone in the graph)
                spec.append("dropout")
            features = out
    return ModelCase(nn.Sequential(*layers).eval(), inputs, spec)


# ------------------------------------------------------------------ assertions


def _float_leaves(out: Any) -> list[torch.Tensor]:
    return [t.detach() for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _run64(module: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    """Run ``module`` in float64 (a copy), so that the comparison sees the rewrite's own error
    (parameters rounded once to float32) and not the rounding of float32 arithmetic."""
    m = (clone_graph(module) if isinstance(module, fx.GraphModule) else copy.deepcopy(module)).double()
    with torch.no_grad():
        return _float_leaves(m(*[t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]))


def _rel_error(ref: list[torch.Tensor], out: list[torch.Tensor]) -> tuple[float, float]:
    return output_error(ref, out)


def assert_preserves(passes: Union[PassLike, Sequence[PassLike]], model: Union[nn.Module, fx.GraphModule], inputs: Any,
                     tol: Optional[float] = None, extra_inputs: int = 2) -> PassManagerResult:
    """Assert that running ``passes`` (a pass, its name, or a list of them, ordered by their
    constraints) keeps ``model``'s function within ``tol``: max |Δ| / max |y| over all float
    outputs, on ``inputs`` and on ``extra_inputs`` random inputs of the same shapes.

    ``tol`` defaults to the sum of the tolerances the passes declare. Passes that declare
    ``preserves = "nothing"`` need an explicit ``tol``. Both graphs are evaluated in float64
    so that the check measures the rewrite, not float32 arithmetic. Also asserts that the
    graph passes the IR verifier after every pass and that ``model`` itself is unchanged.
    Returns the PassManagerResult (``.gm``, ``.report``) for further checks.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    pass_list = [get_pass(p) for p in (passes if isinstance(passes, (list, tuple)) else [passes])]
    if tol is None:
        if any(p.preserves == "nothing" for p in pass_list):
            raise ValueError("a pass that declares preserves='nothing' needs an explicit tol= for assert_preserves")
        tol = sum(p.tolerance for p in pass_list)
    gm = clone_graph(model) if isinstance(model, fx.GraphModule) else capture(model, inputs)
    probes = [inputs] + [tuple(torch.randn_like(t) * t.std().clamp_min(1.0) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                               for t in inputs) for _ in range(extra_inputs)]
    with torch.no_grad():
        before_model = [_float_leaves(model(*p)) for p in probes]
    references = [_run64(gm, p) for p in probes]
    result = PassManager(pass_list, lint=True).run(gm, inputs)
    names = ", ".join(p.name for p in pass_list)
    for i, (p, ref) in enumerate(zip(probes, references)):
        out = _run64(result.gm, p)
        max_abs, rel = _rel_error(ref, out)
        assert rel <= tol, (
            f"passes [{names}] changed the function by {rel:.3g} relative (max abs {max_abs:.3g}) "
            f"on {'the example' if i == 0 else 'random'} inputs; allowed {tol:g}"
        )
    with torch.no_grad():
        for p, before in zip(probes, before_model):
            after = _float_leaves(model(*p))
            assert all(torch.equal(a, b) for a, b in zip(before, after)), (
                f"passes [{names}] modified the input model itself: a pass must write new tensors, not into the old ones"
            )
    return result


def op_counts(gm: fx.GraphModule) -> Counter:
    """Counter of ``gm``'s call_function nodes keyed by op name ("aten.convolution.default",
    "quantized_decomposed.quantize_per_tensor.tensor", "getitem", ...): the structure a
    pass left, as data (qcompiler.count_ops, as a Counter: an absent op counts 0)."""
    return Counter(count_ops(gm))


def assert_op_counts(gm: fx.GraphModule, expected: dict[str, int]) -> None:
    """Assert that ``gm`` holds exactly ``expected[op]`` nodes of each op named (0: none),
    listing every mismatch at once (after torchao's ``checkGraphModuleNodes``)."""
    counts = op_counts(gm)
    wrong = [f"{op}: expected {n}, found {counts[op]}" for op, n in expected.items() if counts[op] != n]
    assert not wrong, "op counts differ:\n  " + "\n  ".join(wrong) + f"\nall ops: {dict(counts)}"
