import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given

import qcompiler
from qcompiler import PassManager
from qcompiler.graph import aten, get_tensor, layer_view
from qcompiler.passes.equalize import _find_pair, _in_ranges, _out_ranges
from qcompiler.testing import assert_op_counts, assert_preserves, float_models, op_counts


def pair_imbalance(gm):
    """For every equalizable pair: max over live channels of |log(r1/r2)|."""
    worst = 0.0
    for node in gm.graph.nodes:
        first = layer_view(gm, node)
        pair = _find_pair(gm, first) if first is not None else None
        if pair is None:
            continue
        r1 = _out_ranges(get_tensor(gm, pair.first.weight_node).double())
        r2 = _in_ranges(get_tensor(gm, pair.second.weight_node).double(), pair.second.groups)
        live = (r1 > 1e-12 * r1.max()) & (r2 > 1e-12 * r2.max())
        if live.any():
            worst = max(worst, float((r1[live] / r2[live]).log().abs().max()))
    return worst


@given(float_models())
def test_equalize_preserves_the_function_and_balances_every_pair(case):
    gm = qcompiler.capture(case.model, case.inputs)
    folded = PassManager(["fold_bn"]).run(gm, case.inputs).gm
    result = assert_preserves("equalize", folded, case.inputs)
    assert pair_imbalance(result.gm) < 1e-2


def separable(act=nn.ReLU6, project_kernel=1):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 12, 1, bias=False), nn.BatchNorm2d(12), act(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12), act(),
        nn.Conv2d(12, 6, project_kernel, padding=project_kernel // 2, bias=False), nn.BatchNorm2d(6),
    ).eval()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.logspace(-2, 2, m.out_channels).view(-1, 1, 1, 1))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.2, 2)
                m.weight.uniform_(0.2, 2)
                m.bias.uniform_(1, 4)  # high biases: absorption has work to do
    return model, torch.randn(2, 4, 7, 7)


def test_relu6_becomes_a_per_channel_clamp_with_scaled_bounds():
    model, x = separable()
    result = assert_preserves(["fold_bn", "equalize"], model, x)
    clamps = [n for n in result.gm.graph.nodes if n.target == aten.clamp.Tensor]
    assert len(clamps) == 2 and qcompiler.count_ops(result.gm).get("aten.hardtanh.default") is None
    hi = get_tensor(result.gm, clamps[0].args[2])
    assert hi.shape == (12, 1, 1) and hi.std() > 0  # per channel, no longer all 6


def test_high_bias_absorption_is_exact_and_only_where_the_next_layer_does_not_pad():
    model, x = separable(project_kernel=1)
    result = assert_preserves(["fold_bn", "equalize"], model, x)
    assert result.report["equalize"].counts["absorbed"] == 1
    assert result.ctx.notes["equalize"]["absorbed"] == [("convolution_1", "convolution_2")]  # dw -> relu6 -> 1x1 project; expand -> dw pads
    model, x = separable(project_kernel=3)
    result = assert_preserves(["fold_bn", "equalize"], model, x)
    assert result.report["equalize"].counts["absorbed"] == 0 and result.ctx.notes["equalize"]["absorbed"] == []


def test_high_bias_absorption_stays_exact_far_outside_the_bn_statistics():
    model, x = separable(act=nn.ReLU)
    gm = PassManager(["fold_bn", "equalize"]).run(qcompiler.capture(model, x), (x,)).gm
    for scale in (0.01, 10.0, 100.0):
        probe = torch.randn(2, 4, 7, 7) * scale
        with torch.no_grad():
            expected = model(probe)
            torch.testing.assert_close(gm(probe), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_dead_channels_never_divide_by_zero():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0  # dead output channel of the first layer
        model[2].weight[:, 2] = 0  # input channel the second layer ignores
    x = torch.randn(2, 3, 4, 4)
    result = assert_preserves("equalize", model, x)
    for _, t in result.gm.named_buffers():
        assert torch.isfinite(t).all()


def test_leaky_relu_pairs_are_scaled_but_not_absorbed():
    model = nn.Sequential(nn.Linear(5, 8), nn.LeakyReLU(0.2), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 2, 8).view(-1, 1))
    result = assert_preserves("equalize", model, torch.randn(4, 5))
    counts = result.report["equalize"].counts
    assert (counts["pairs"], counts["changed_layers"], counts["layers"], counts["absorbed"]) == (1, 2, 2, 0)
    assert_op_counts(result.gm, {"aten.linear.default": 2, "aten.leaky_relu.default": 1, "aten.clamp.Tensor": 0})
    assert pair_imbalance(result.gm) < 1e-2


def test_layers_with_several_users_are_left_alone():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.b(y) + y

    model, x = Branchy().eval(), torch.randn(1, 3, 4, 4)
    result = assert_preserves("equalize", model, x)
    assert result.report["equalize"].counts["pairs"] == 0 and not result.report["equalize"].modified
    assert op_counts(result.gm) == op_counts(qcompiler.capture(model, x))
