"""Issue 14's pooling forms and standalone BatchNorm: average pooling with ceil_mode /
count_include_pad=False / divisor_override (PyTorch's divisors, per-position requantize),
max pooling with ceil_mode, adaptive average and max pooling to any size, a BatchNorm that
no layer absorbs; PyTorch's window rules checked exactly, each op bit-exact on host
(check_op), one model with every form on arm_cpu."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler.passes.equalize import _through_pool
from qcompiler.ops import adaptive_avg_pool2d, avg_pool2d, batch_norm
from qcompiler.ops.numeric import adaptive_reduce, pool_output_size, windows
from qcompiler.testing import _init_bn, check_op

aten = torch.ops.aten
ONES = torch.ones(1, 1, 10, 10)


class Branches(nn.Module):
    """A conv, then each pool on its output: one output per pool; then each of ``on_input``
    on the input itself."""

    def __init__(self, *pools: nn.Module, on_input: tuple = ()):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pools = nn.ModuleList(pools)
        self.on_input = nn.ModuleList(on_input)

    def forward(self, x):
        y = self.conv(x)
        return tuple(p(y) for p in self.pools) + tuple(m(x) for m in self.on_input)


def _bn(channels: int, affine: bool = True, seed: int = 1) -> nn.Module:
    """A BatchNorm with random statistics; channel 0's γ negative, channel 1's zero."""
    bn = nn.BatchNorm2d(channels, affine=affine)
    _init_bn(bn, torch.Generator().manual_seed(seed))
    if affine:
        with torch.no_grad():
            bn.weight[0] = -bn.weight[0].abs()
            bn.weight[1] = 0.0
    return bn.eval()


class DenseLayer(nn.Module):
    """DenseNet's pre-activation: concat → BatchNorm → ReLU → conv (nothing to fold into)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.bn, self.conv = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 3, 3, padding=1), _bn(5), nn.Conv2d(5, 4, 1)

    def forward(self, x):
        return self.conv(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


def _valid_counts(shape, kernel, stride, padding, ceil_mode):
    per_dim = []
    for size, k, s, p in zip(shape, kernel, stride, padding):
        out = pool_output_size(size, k, p, s, 1, ceil_mode)
        per_dim.append(avg_pool2d.window_factors(size, k, s, p, out)[1])
    return np.outer(*per_dim)


AVG_CASES = [(h, w, k, s, p, ceil, inc, div)
             for h, w in ((10, 10), (7, 9), (5, 4))
             for k, s in ((2, 2), (3, 2), (3, 3), (2, 1))
             for p in range(k // 2 + 1)
             for ceil, inc, div in itertools.product((False, True), (False, True), (None, 5))]


def test_avg_pool_divisors_are_pytorchs():
    """On all-ones inputs PyTorch's average is (input elements in the window) / divisor: the
    tables give the same float32 values and output sizes, for every case of the grid."""
    for h, w, k, s, p, ceil, inc, div in AVG_CASES:
        got = nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=inc, divisor_override=div)(torch.ones(1, 1, h, w))[0, 0]
        divisor = avg_pool2d.divisors((h, w), [k, k], [s, s], [p, p], ceil, inc, div)
        want = _valid_counts((h, w), [k, k], [s, s], [p, p], ceil).astype(np.float32) / divisor.astype(np.float32)
        assert got.shape == want.shape and np.array_equal(got.numpy(), want), (h, w, k, s, p, ceil, inc, div)


def test_avg_pool_all_ones_example():
    """The issue's example: on a 10×10 all-ones input, AvgPool2d(3, 2, padding=1,
    ceil_mode=True) is exactly 1 everywhere without counting padding (float model and
    integer codes), and 4/9, 2/6, 1/4 at the corners when counting it."""
    pool = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
    assert torch.equal(pool(ONES), torch.ones(1, 1, 6, 6))
    qm = qcompiler.quantize(nn.Sequential(pool).eval(), (ONES,), calibration=[(ONES,)])
    assert torch.equal(qm.interpret(ONES), torch.ones(1, 1, 6, 6))
    counting = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True)
    got = counting(ONES)[0, 0]
    assert (got[0, 0].item(), got[0, -1].item(), got[-1, -1].item()) == (
        np.float32(4 / 9).item(), np.float32(2 / 6).item(), np.float32(1 / 4).item())
    div = avg_pool2d.divisors((10, 10), [3, 3], [2, 2], [1, 1], True, True, None)
    assert (div[0, 0], div[0, -1], div[-1, -1]) == (9, 6, 4)
    qm = qcompiler.quantize(nn.Sequential(counting).eval(), (ONES,), calibration=[(ONES,)])
    step = 1 / 255
    assert torch.allclose(qm.interpret(ONES), counting(ONES), atol=step, rtol=0)  # one step: 2/6 is 127.5 codes


def test_ceil_windows_are_pytorchs():
    """Max pooling windows (ceil_mode, padding, dilation) and adaptive windows equal
    PyTorch's: the numpy references' max over them is PyTorch's max, exactly."""
    gen = torch.Generator().manual_seed(0)
    for h, w, k, s, p, d in [(10, 9, 3, 2, 0, 1), (5, 5, 2, 2, 1, 1), (11, 8, 3, 2, 1, 2), (7, 7, 3, 3, 1, 1), (6, 4, 2, 2, 0, 1)]:
        x = torch.randn(1, 2, h, w, generator=gen)
        want = nn.MaxPool2d(k, s, p, d, ceil_mode=True)(x)
        extra = [max(0, (pool_output_size(n, k, p, s, d, True) - 1) * s + d * (k - 1) + 1 - (n + 2 * p)) for n in (h, w)]
        got = windows(x.numpy(), [k, k], [s, s], [p, p, p + extra[0], p + extra[1]], [d, d], pad_value=-np.inf).max(axis=(-1, -2))
        assert np.array_equal(got, want.numpy()), (h, w, k, s, p, d)
    for (h, w), size in [((10, 9), (3, 4)), ((10, 9), (6, 5)), ((7, 5), (7, 2)), ((4, 4), (3, 3))]:
        x = torch.randn(1, 2, h, w, generator=gen)
        assert np.array_equal(adaptive_reduce(x.numpy(), size, np.max), nn.AdaptiveMaxPool2d(size)(x).numpy())
        means = adaptive_reduce(x.double().numpy(), size, np.sum) / adaptive_avg_pool2d.divisors((h, w), size)
        assert np.allclose(means, nn.AdaptiveAvgPool2d(size)(x.double()).numpy(), rtol=0, atol=1e-12)


def test_avg_pool_forms_on_host():
    found = check_op(Branches(nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
                              nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True),
                              nn.AvgPool2d(2, 2, padding=1, count_include_pad=False),
                              nn.AvgPool2d(3, 2, ceil_mode=True, divisor_override=4),
                              nn.AvgPool2d(2)),
                     (torch.randn(1, 2, 9, 10),), "avg_pool2d", targets=("host",))
    assert found.uses == 5 and found.exact_targets == ["host"]


def test_max_pool_ceil_mode_on_host():
    found = check_op(Branches(nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(2, 2, padding=1, ceil_mode=True),
                              nn.MaxPool2d(3, 2, padding=1, dilation=2, ceil_mode=True)),
                     (torch.randn(1, 2, 9, 10),), "max_pool2d", targets=("host",), max_steps=0)
    assert found.uses == 3 and found.exact_targets == ["host"]


def test_adaptive_avg_pool_on_host():
    found = check_op(Branches(nn.AdaptiveAvgPool2d((3, 4)), nn.AdaptiveAvgPool2d((6, 5)), nn.AdaptiveAvgPool2d((9, None)),
                              nn.AdaptiveAvgPool2d(1)),
                     (torch.randn(2, 2, 9, 10),), "adaptive_avg_pool2d", targets=("host",))
    ops = [n.target for n in found.qm.program.graph.nodes]
    assert found.uses == 3 and torch.ops.qcompiler.mean.default in ops  # to 1×1: qcompiler.mean as before


def test_adaptive_max_pool_on_host():
    found = check_op(Branches(nn.AdaptiveMaxPool2d((3, 4)), nn.AdaptiveMaxPool2d((6, 5)), nn.AdaptiveMaxPool2d((9, None)),
                              nn.AdaptiveMaxPool2d(1)),
                     (torch.randn(2, 2, 9, 10),), "adaptive_max_pool2d", targets=("host",), max_steps=0)
    assert found.uses == 4


def test_batch_norm_reference_is_the_float_formula():
    """The integer BatchNorm against Q(a·x̂ + b) computed in float64 from the module's own
    statistics: within one step, over every code, for channels with γ < 0, γ = 0 and γ > 0,
    with and without affine parameters."""
    q = np.arange(256, dtype=np.int64).reshape(1, 1, 256).repeat(4, axis=1)
    for affine, (s_x, z_x, s_y, z_y) in itertools.product((True, False), [(0.02, 128, 0.03, 100), (0.5, 3, 0.01, 250)]):
        bn = _bn(4, affine, seed=7)
        a, b = batch_norm.affine(*(None if t is None else t.detach().double().numpy()
                                   for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)), eps=bn.eps)
        x = torch.from_numpy(s_x * (q - z_x)).double()
        assert torch.allclose(torch.from_numpy(a[None, :, None] * x.numpy() + b[None, :, None]),
                              bn.double()(x.unsqueeze(-1)).squeeze(-1), atol=1e-9)
        mult, shift, offset = batch_norm.integer_params(a, b, s_x, s_y)
        lo, hi = np.zeros(4, dtype=np.int64), np.full(4, 255, dtype=np.int64)
        got = batch_norm.reference(q, z_x, mult, shift, offset, z_y, lo, hi)
        want = np.clip(np.rint((a[None, :, None] * x.numpy() + b[None, :, None]) / s_y) + z_y, 0, 255)
        assert np.abs(got - want).max() <= 1 and (got != want).mean() < 0.5, (affine, s_x, s_y)
        if affine:
            assert mult[0] < 0 and mult[1] == 0 and (mult[2:] > 0).all()
            assert (got[0, 1] == np.clip(np.rint(b[1] / s_y) + z_y, 0, 255)).all()  # γ = 0: the offset alone


def test_batch_norm_on_host():
    """Alone (BatchNorm2d, without affine, BatchNorm1d) and after a concat with a ReLU after it."""
    for model, shape in [(nn.Sequential(_bn(3)), (1, 3, 10, 10)), (nn.Sequential(_bn(3, affine=False)), (2, 3, 5, 4)),
                         (nn.Sequential(nn.BatchNorm1d(4)).eval(), (3, 4)), (DenseLayer(), (1, 2, 6, 6))]:
        found = check_op(model.eval(), (torch.randn(*shape),), "batch_norm", targets=("host",))
        assert found.uses == 1 and found.exact_targets == ["host"]


def test_pool_forms_and_batch_norm_on_arm_cpu():
    model = Branches(nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
                     nn.MaxPool2d(3, 2, ceil_mode=True), nn.AdaptiveAvgPool2d((3, 2)), nn.AdaptiveMaxPool2d((2, 4)),
                     on_input=(_bn(2),))
    found = check_op(model, (torch.randn(1, 2, 7, 6),), "avg_pool2d", targets=("arm_cpu",))
    ops = {n.target for n in found.qm.program.graph.nodes}
    qc = torch.ops.qcompiler
    assert {qc.max_pool2d.default, qc.adaptive_avg_pool2d.default, qc.adaptive_max_pool2d.default, qc.batch_norm.default} <= ops
    assert found.exact_targets == ["arm_cpu"]


@pytest.mark.parametrize("kwargs, shift_ok", [
    ({}, True), ({"padding": 1}, False), ({"padding": 1, "count_include_pad": False}, True),
    ({"padding": 1, "ceil_mode": True, "count_include_pad": False}, True), ({"ceil_mode": True}, True),
    ({"divisor_override": 3}, False),
])
def test_equalize_shifts_through_pools_whose_divisor_counts_inputs(kwargs, shift_ok):
    """High-bias absorption moves a constant through an average pool only when each divisor
    is its window's count of input elements."""
    gm = qcompiler.capture(nn.Sequential(nn.AvgPool2d(3, 2, **kwargs)).eval(), (torch.randn(1, 2, 8, 8),))
    node = next(n for n in gm.graph.nodes if n.target == aten.avg_pool2d.default)
    assert _through_pool(gm, node, 4, 1).shift_ok is shift_ok
