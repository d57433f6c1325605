"""A graph quantized by PT2E (torchao's XNNPACK quantizer) is accepted as it is."""
import warnings

import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler import meta
from qcompiler.metrics import sqnr_db

pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
xnnpack = pytest.importorskip("torchao.testing.pt2e._xnnpack_quantizer")


def pt2e_quantized(model, x, calibration):
    exported = torch.export.export(model, (x,)).module()
    quantizer = xnnpack.XNNPACKQuantizer().set_global(xnnpack.get_symmetric_quantization_config(is_per_channel=True))
    prepared = pt2e.prepare_pt2e(exported, quantizer)
    for batch in calibration:
        prepared(batch)
    return pt2e.convert_pt2e(prepared)


def test_pt2e_xnnpack_graph_becomes_an_integer_program_and_interprets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=8), nn.ReLU6(), nn.Conv2d(8, 8, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    calibration = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    x = calibration[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = pt2e_quantized(model, x, calibration)
    qm = qcompiler.from_pt2e(converted, (x,))
    ops = {n.target._schema.name.split("::")[1] for n in qm.program.graph.nodes if getattr(n.target, "namespace", "") == "qcompiler"}
    assert {"quantize", "conv2d", "requantize", "mean", "linear", "dequantize"} <= ops
    assert not any(n.meta.get(meta.FLOAT_FALLBACK) for n in qm.program.graph.nodes), "every op of the PT2E graph runs in integers"
    with torch.no_grad():
        ref, sim = model(x), converted(x)
    out = qm.interpret(x)
    assert max(r.max_diff for r in qm.compare_ops(x)) <= 1
    assert sqnr_db(ref, out) > 25 and sqnr_db(sim, out) > 30


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.pool, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2), nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = self.pool(y + self.c2(y))
        return self.fc(y.mean((2, 3)))


def test_pt2e_x86_inductor_graph_with_fused_conv_add_and_a_float_output_is_exact_on_the_host():
    """X86InductorQuantizer leaves no quantizer between a conv and the add it feeds, nor after
    the last linear: the conv runs in int32 at 1/128 of the add's step, the linear in int32
    then dequantized, so the whole graph is integer and the host build equals it."""
    xiq = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    model = Residual().eval()
    calibration = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    x = calibration[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = pt2e.prepare_pt2e(torch.export.export(model, (x,)).module(),
                                     xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config()))
        for batch in calibration:
            prepared(batch)
        converted = pt2e.convert_pt2e(prepared)
    qm = qcompiler.from_pt2e(converted, (x,))
    assert not any(n.meta.get(meta.FLOAT_FALLBACK) for n in qm.program.graph.nodes)
    assert max(r.max_diff for r in qm.compare_ops(x)) <= 1
    out = qm.interpret(x)
    with torch.no_grad():
        assert sqnr_db(converted(x), out) > 30
    assert torch.equal(torch.as_tensor(qm.compile("host")(x)), torch.as_tensor(out))
