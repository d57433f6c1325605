"""Integer forms of issue 14's layout-like ops: reflect / replicate / circular / constant
padding of codes (qcompiler/ops/pad.py), conv1d as a conv2d of height 1
(qcompiler/ops/conv2d.py), bilinear upsampling with fixed-point weights
(qcompiler/ops/upsample_bilinear2d.py), nearest-exact upsampling, pixel shuffle/unshuffle.
Each is checked with check_op on the host; one case each of pad, conv1d and bilinear on
arm_cpu too."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qcompiler
from qcompiler.errors import QCompilerError
from qcompiler.interpreter import interpret
from qcompiler.ops import qc
from qcompiler.ops import pad as pad_op
from qcompiler.ops.upsample_bilinear2d import FRACTION_BITS, axis_weights
from qcompiler.passes.adaround import Adaround
from qcompiler.testing import check_op

aten = torch.ops.aten


def _program_ops(qm) -> list[str]:
    return [str(n.target) for n in qm.program.graph.nodes if n.op == "call_function"]


# ------------------------------------------------------------------ padding


class Padded(nn.Module):
    """conv → F.pad(mode) → conv: the padding sits between two quantized layers."""

    def __init__(self, pad: tuple, mode: str, dims: int = 2, value: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.a, self.b = conv(3, 4, 3), conv(4, 2, 3)
        self.pad, self.mode, self.value = pad, mode, value

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = F.pad(y, self.pad, mode=self.mode, value=self.value) if self.mode == "constant" else F.pad(y, self.pad, mode=self.mode)
        return self.b(y)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_of_codes_are_exact_on_the_host(mode):
    found = check_op(Padded((1, 2, 2, 1), mode).eval(), (torch.randn(2, 3, 7, 8),), "pad")
    assert found.uses == 1 and found.exact_targets == ["host"]
    (node,) = found.qm.program.graph.find_nodes(op="call_function", target=qc.pad.default)
    assert node.args[1:] == ([1, 2, 2, 1], mode)


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_1d_padding_modes_are_exact_on_the_host(mode):
    found = check_op(Padded((2, 3), mode, dims=1).eval(), (torch.randn(2, 3, 12),), "pad")
    assert found.exact_targets == ["host"]


def test_conv_padding_modes_keep_one_pad_node():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="replicate"), nn.ReLU(),
                          nn.Conv2d(4, 2, (3, 4), padding="same", padding_mode="circular")).eval()
    found = check_op(model, (torch.randn(1, 3, 6, 7),), "pad")
    assert found.uses == 2


def test_constant_padding_by_zero_is_the_zero_point_pad_the_kernels_take():
    found = check_op(Padded((1, 0, 2, 1), "constant").eval(), (torch.randn(2, 3, 6, 6),), "aten.constant_pad_nd.default")
    (node,) = found.qm.program.graph.find_nodes(op="call_function", target=aten.constant_pad_nd.default)
    assert node.args[0].target == qc.conv2d.default and node.args[2] == node.args[0].args[10]  # the conv's output zero point


def test_constant_padding_by_another_value_is_listed_as_needing_float():
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(QCompilerError, match=r"aten\.pad\.default.*constant padding by 0\.5 has no integer form"):
        qcompiler.quantize(Padded((1, 1, 1, 1), "constant", value=0.5).eval(), x, calibration=[x])
    qm = qcompiler.quantize(Padded((1, 1, 1, 1), "constant", value=0.5).eval(), x, calibration=[x], overrides={"pad": "float"})
    assert any(n.meta.get("qc_float_fallback") and n.target == aten.pad.default for n in qm.program.graph.nodes)
    assert torch.equal(qm.interpret(x), qm.simulate(x))
    assert torch.equal(qm.compile("host", progress=False)(x), qm.interpret(x))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("pad", [(1, 2, 2, 0), (-1, 2, 0, 1), (2, -1, 1, -1), (3, 0, 0, 4)])
def test_the_reference_equals_torch_on_codes_negative_pads_included(mode, pad):
    x = torch.randint(-128, 128, (2, 3, 5, 6), dtype=torch.int8)
    want = aten.pad.default(x, list(pad), mode).numpy()
    got = pad_op.reference(x.numpy(), list(pad), mode)
    assert got.dtype == np.int8 and np.array_equal(got, want)


def test_ops_of_one_padding_mode_are_kept_whole_too():
    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 3)

        def forward(self, x):
            return self.b(aten.replication_pad2d(aten.reflection_pad2d(self.a(x), [1, 1, 2, 0]), [0, 1, 1, 0]))

    found = check_op(Direct().eval(), (torch.randn(1, 3, 5, 5),), "pad")
    assert [n.args[2] for n in found.qm.program.graph.find_nodes(op="call_function", target=qc.pad.default)] == \
        ["reflect", "replicate"]


# ------------------------------------------------------------------ conv1d


class Conv1dNet(nn.Module):
    def __init__(self, bn: bool = True, **conv):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv1d(3, 6, **conv)
        self.bn = nn.BatchNorm1d(6) if bn else nn.Identity()
        self.head = nn.Conv1d(6, 4, 1)
        if bn:
            with torch.no_grad():
                self.bn.running_mean.uniform_(-1, 1)
                self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


@pytest.mark.parametrize("conv", [dict(kernel_size=3, padding=1), dict(kernel_size=6, padding="same"),
                                  dict(kernel_size=3, stride=2, dilation=2, groups=3, padding=2, bias=False),
                                  dict(kernel_size=4, padding=2, padding_mode="circular")],
                         ids=["k3p1", "k6same", "strided-dilated-grouped", "circular"])
def test_conv1d_is_a_conv2d_of_height_one(conv):
    found = check_op(Conv1dNet(**conv).eval(), (torch.randn(2, 3, 20),), "conv2d")
    assert found.uses == 2 and found.exact_targets == ["host"]
    ops = _program_ops(found.qm)
    assert "aten._native_batch_norm_legit_no_training.default" not in str(found.qm.graph.graph)  # folded
    assert ops.count("aten.unsqueeze.default") == ops.count("aten.squeeze.dims") == 2


def test_conv1d_same_padding_with_an_even_kernel_pads_two_left_three_right():
    found = check_op(Conv1dNet(bn=False, kernel_size=6, padding="same").eval(), (torch.randn(1, 3, 16),), "conv2d")
    (pad,) = found.qm.program.graph.find_nodes(op="call_function", target=aten.constant_pad_nd.default)
    conv = next(iter(found.qm.program.graph.find_nodes(op="call_function", target=qc.conv2d.default)))
    assert pad.args[1] == [0, 1] and conv.args[5] == [0, 2]  # 2 + 1 on the right, 2 on the left


@pytest.mark.parametrize("ptq", [["bias_correction"], [Adaround(iterations=100)]], ids=["bias_correction", "adaround"])
def test_ptq_passes_handle_conv1d_weights(ptq):
    model = Conv1dNet(kernel_size=5, padding=2).eval()
    x = torch.randn(8, 3, 24)
    plain = qcompiler.quantize(model, x, calibration=[x])
    tuned = qcompiler.quantize(model, x, calibration=[x], ptq=ptq)
    with torch.no_grad():
        ref = model(x)
    err = lambda qm: float((qm.interpret(x) - ref).pow(2).mean())  # noqa: E731
    assert err(tuned) <= err(plain) * 1.5
    assert max(r.max_diff for r in tuned.compare_ops(x)) <= 1


def test_conv3d_still_says_it_has_no_integer_form():
    model = nn.Sequential(nn.Conv3d(2, 3, 1)).eval()
    x = torch.randn(1, 2, 3, 4, 4)
    with pytest.raises(QCompilerError, match="only 1-d and 2-d convolution have an integer form yet"):
        qcompiler.quantize(model, x, calibration=[x]).program


# ------------------------------------------------------------------ upsampling


class Upsampled(nn.Module):
    def __init__(self, upsample: nn.Module):
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.up, self.head = nn.Conv2d(3, 4, 3, padding=1), upsample, nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.up(torch.relu(self.conv(x))))


@pytest.mark.parametrize("upsample", [nn.Upsample(scale_factor=2, mode="bilinear"),
                                      nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                                      nn.Upsample(size=(7, 11), mode="bilinear"),
                                      nn.Upsample(scale_factor=(1.5, 2.5), mode="bilinear", align_corners=True)],
                         ids=["x2", "x2-align", "size7x11", "x1.5x2.5-align"])
def test_bilinear_upsampling_is_within_one_step_and_exact_on_the_host(upsample):
    found = check_op(Upsampled(upsample).eval(), (torch.randn(2, 3, 5, 6),), "upsample_bilinear2d")
    assert found.uses == 1 and found.exact_targets == ["host"]


@pytest.mark.parametrize("n_in,n_out,align,scale", [(5, 10, False, 2.0), (5, 10, True, None), (6, 7, False, None),
                                                    (4, 9, True, None), (3, 1, False, None), (6, 15, False, 2.5)])
def test_bilinear_weights_follow_torch_and_sum_to_one(n_in, n_out, align, scale):
    index, weight = axis_weights(n_in, n_out, align, scale)
    assert (weight.sum(axis=0) == 1 << FRACTION_BITS).all() and (index >= 0).all() and (index < n_in).all()
    x = torch.randn(1, 1, 1, n_in, dtype=torch.float64)
    size, factors = ([1, n_out], None) if scale is None else (None, [1.0, scale])
    want = aten.upsample_bilinear2d.vec(x, size, align, factors)[0, 0, 0].numpy()
    got = (x[0, 0, 0].numpy()[index] * weight).sum(axis=0) / (1 << FRACTION_BITS)
    assert np.abs(got - want).max() <= 2.0 ** -(FRACTION_BITS + 1) * 2 * float(x.abs().max())


@pytest.mark.parametrize("upsample", [nn.Upsample(scale_factor=2, mode="nearest-exact"),
                                      nn.Upsample(size=(7, 9), mode="nearest-exact")], ids=["x2", "size7x9"])
def test_nearest_exact_upsampling_copies_codes(upsample):
    found = check_op(Upsampled(upsample).eval(), (torch.randn(2, 3, 5, 6),), "upsample_nearest2d")
    program = found.qm.program
    (node,) = program.graph.find_nodes(op="call_function", target=qc.upsample_nearest2d.default)
    x = torch.randn(2, 3, 5, 6)
    codes = {}
    interpret(program, x, record=codes)
    source = codes[node.args[0].name]
    assert np.array_equal(codes[node.name], upsample(torch.from_numpy(source.astype(np.float32))).numpy().astype(source.dtype))


# ------------------------------------------------------------------ pixel shuffle


@pytest.mark.parametrize("shuffle,channels", [(nn.PixelShuffle(2), 8), (nn.PixelUnshuffle(2), 2)], ids=["shuffle", "unshuffle"])
def test_pixel_shuffle_and_unshuffle_are_layout_ops(shuffle, channels):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, channels, 1), shuffle, nn.Conv2d(channels * 4 if channels == 2 else 2, 2, 1)).eval()
    found = check_op(model, (torch.randn(2, 3, 4, 6),), "aten.permute.default")
    assert found.exact_targets == ["host"]


# ------------------------------------------------------------------ arm_cpu


@pytest.mark.parametrize("case", ["pad-reflect", "conv1d", "bilinear"])
def test_bit_exact_under_qemu(case):
    model, x, op = {
        "pad-reflect": (Padded((1, 2, 2, 1), "reflect"), torch.randn(1, 3, 6, 7), "pad"),
        "conv1d": (Conv1dNet(kernel_size=6, padding="same"), torch.randn(1, 3, 16), "conv2d"),
        "bilinear": (Upsampled(nn.Upsample(scale_factor=2, mode="bilinear")), torch.randn(1, 3, 4, 5), "upsample_bilinear2d"),
    }[case]
    found = check_op(model.eval(), (x,), op, targets=("arm_cpu",))
    assert found.exact_targets == ["arm_cpu"]
