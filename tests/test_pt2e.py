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
