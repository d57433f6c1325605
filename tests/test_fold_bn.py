import pytest
import torch
import torch.nn as nn
from hypothesis import given

import qcompiler
from qcompiler import PassError, PassManager
from qcompiler import meta
from qcompiler.graph import BN_EVAL_OPS, is_call, layer_view
from qcompiler.testing import assert_op_counts, assert_preserves, float_models, op_counts

BN = "aten._native_batch_norm_legit_no_training.default"
CONV = "aten.convolution.default"
LINEAR = "aten.linear.default"


def foldable_bns_left(gm):
    """BatchNorms that fold_bn should have folded: producer is a single-user conv (or a
    linear with 2-d output)."""
    left = []
    for n in gm.graph.nodes:
        if is_call(n, BN_EVAL_OPS):
            view = layer_view(gm, n.args[0])
            if view is not None and len(view.node.users) == 1:
                shape = view.node.meta[meta.VAL].shape
                if view.kind == "conv" or len(shape) == 2:
                    left.append(n.name)
    return left


@given(float_models())
def test_fold_bn_preserves_the_function_and_folds_every_foldable_bn(case):
    result = assert_preserves("fold_bn", case.model, case.inputs)
    assert foldable_bns_left(result.gm) == []


@pytest.mark.parametrize("groups,bias,stride,padding,dilation", [
    (1, True, 1, 0, 1), (1, False, 2, 1, 1), (4, False, 1, 2, 2), (2, True, 2, 3, 1), (4, True, 1, 1, 1),
])
def test_fold_bn_conv_variants(groups, bias, stride, padding, dilation):
    model = nn.Sequential(nn.Conv2d(4, 8, 3, stride, padding, dilation, groups, bias=bias), nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.1, 4)
        model[1].weight.normal_()
        model[1].bias.normal_()
    x = torch.randn(2, 4, 9, 9)
    assert op_counts(qcompiler.capture(model, x))[BN] == 1
    result = assert_preserves("fold_bn", model, x)
    assert_op_counts(result.gm, {BN: 0, CONV: 1})
    assert result.report["fold_bn"].counts == {"folded": 1, "left_alone": 0}


def test_fold_bn_into_linear_and_bn_without_producer_left_alone():
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.BatchNorm1d(5)).eval()
    with torch.no_grad():
        for bn in (model[1], model[3]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 6)
    assert op_counts(qcompiler.capture(model, x))[BN] == 2
    result = assert_preserves("fold_bn", model, x)
    assert_op_counts(result.gm, {BN: 1, LINEAR: 1})
    assert result.report["fold_bn"].counts == {"folded": 1, "left_alone": 1}
    (left,) = [n for n in result.gm.graph.nodes if is_call(n, BN_EVAL_OPS)]
    assert left.args[0].target == torch.ops.aten.relu.default  # the second BN, after the relu, stays
    assert [reason.split(": ", 1)[1] for reason in result.ctx.notes["fold_bn"]] == [
        "its input is not a conv/linear with constant weights"]


def test_conv_with_two_users_is_not_folded():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    result = assert_preserves("fold_bn", TwoUsers().eval(), torch.randn(1, 3, 4, 4))
    assert_op_counts(result.gm, {BN: 1, CONV: 1})
    assert result.report["fold_bn"].counts == {"folded": 0, "left_alone": 1}


def test_training_mode_batchnorm_is_an_error_naming_the_node():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    gm = torch.export.export(model, (torch.randn(2, 3, 6, 6),)).run_decompositions().module()
    with pytest.raises(PassError, match=r"(?s)BatchNorm in training mode.*_native_batch_norm_legit_functional.*model.eval\(\)"):
        PassManager(["fold_bn"]).run(gm, (torch.randn(2, 3, 6, 6),))


def test_fold_bn_does_not_touch_the_users_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PassManager(["fold_bn"]).run(qcompiler.capture(model, torch.randn(1, 3, 5, 5)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
