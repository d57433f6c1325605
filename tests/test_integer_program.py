"""The integer program against the simulation: within one quantization step per op."""
import pytest
import torch
import torch.nn as nn
from hypothesis import given

import qcompiler
from qcompiler.testing import ChannelGram, Concat, Difference, Gate, Residual, ZeroPad, float_models

ALL_INTEGER_OPS = {"quantize", "conv2d", "linear", "add", "mul", "matmul", "concat", "mean", "avg_pool2d", "max_pool2d",
                   "requantize", "lut", "dequantize", "upsample_nearest2d"}


def assert_within_one_step(qm, inputs):
    rows = qm.compare_ops(*inputs)
    worst = max(rows, key=lambda r: r.max_diff)
    assert worst.max_diff <= 1, f"{worst.node} ({worst.op}) is {worst.max_diff} steps from the simulation"
    return rows


@given(float_models())
def test_interpreter_is_within_one_step_of_the_simulation_per_op(case):
    qm = qcompiler.quantize(case.model, case.inputs, ptq="minmax", calibration=[case.inputs])
    assert_within_one_step(qm, case.inputs)
    probe = tuple(torch.randn_like(t) for t in case.inputs)  # other inputs than calibrated on: clipping too
    assert_within_one_step(qm, probe)


class EveryOp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Hardswish())
        self.res = Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU()))
        self.diff = Difference(nn.Conv2d(8, 8, 1))
        self.gate = Gate(nn.Conv2d(8, 8, 1))
        self.cat = Concat(nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=2, dilation=2))
        self.pad = ZeroPad((1, 0, 0, 1))
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2)
        self.maxpool = nn.MaxPool2d(2, padding=1)
        self.gram = ChannelGram()
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        y = self.cat(self.gate(self.diff(self.res(self.dw(self.stem(x))))))
        y = self.maxpool(self.up(self.pool(self.pad(y))))
        y = torch.clamp(y, -0.5, 2.0)
        g = self.gram(y)
        return self.fc(torch.flatten(g, 1)), y.mean((2, 3))


def test_every_integer_op_is_within_one_step_and_the_fraction_off_is_small():
    model = EveryOp().eval()
    x = torch.randn(4, 3, 16, 16)
    qm = qcompiler.quantize(model, x, ptq="minmax", calibration=[x, torch.randn(4, 3, 16, 16)])
    ops = {n.target._schema.name.split("::")[1] for n in qm.program.graph.nodes
           if n.op == "call_function" and getattr(n.target, "namespace", "") == "qcompiler"}
    assert ALL_INTEGER_OPS <= ops, f"not exercised: {ALL_INTEGER_OPS - ops}"
    rows = assert_within_one_step(qm, (x,))
    total = sum(r.elements for r in rows)
    assert sum(r.off_by_one for r in rows) / total < 0.05
    sim, program = qm.simulate(x), qm.interpret(x)
    assert isinstance(program, tuple) and len(program) == 2  # the model's output structure is kept
    assert program[0].dtype == torch.float32


def test_program_runs_as_a_torch_module_and_equals_the_interpreter():
    model = EveryOp().eval()
    x = torch.randn(2, 3, 16, 16)
    qm = qcompiler.quantize(model, x)
    for a, b in zip(qm.program(x), qm.interpret(x)):
        assert torch.equal(a, b)


def test_program_carries_explicit_integer_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6()).eval()
    x = torch.rand(2, 3, 6, 6)
    qm = qcompiler.quantize(model, x)
    conv = next(n for n in qm.program.graph.nodes if "conv2d" in str(n.target))
    values = {a.target: getattr(qm.program, a.target) for a in conv.args if isinstance(a, torch.fx.Node) and a.op == "get_attr"}
    dtypes = sorted(str(v.dtype) for v in values.values())
    assert dtypes == ["torch.int64"] * 5 + ["torch.int8"]  # weight int8; bias, multiplier, shift, lo, hi int64
    mult = next(v for k, v in values.items() if "mult" in k)
    assert ((mult >= 2**30) & (mult < 2**31)).all()
    out_scale, out_zp = qm.qparams["hardtanh"].scalar()
    hi = next(v for k, v in values.items() if k.endswith(tuple(f"hi_{i}" for i in range(20))))
    assert int(hi[0]) == min(255, round(6.0 / out_scale) + out_zp)  # relu6's bound, in the output's integers
