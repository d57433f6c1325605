import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import qcompiler
from qcompiler import activation_spec, host_scheme, meta
from qcompiler.metrics import sqnr_db
from qcompiler.observers import CalibrationError
from qcompiler.passes import UnsupportedOpError

Q = "quantized_decomposed.quantize_per_tensor.tensor"


def mobile_block():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()
    for m in model:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.data.normal_()
            m.running_var.data.uniform_(0.5, 2)
    return model, torch.randn(8, 3, 12, 12)


def test_quantizers_sit_after_fused_activations_including_depthwise():
    model, x = mobile_block()
    qm = qcompiler.quantize(model, x, calibration=[x])
    ops = qcompiler.count_ops(qm.graph)
    # input, conv+relu6, depthwise+relu6, pool (shared), linear: five quantizers
    assert ops[Q] == 5
    for node in qm.graph.graph.nodes:
        if str(node.target) == "aten.hardtanh.default":
            assert str(node.args[0].target) == "aten.convolution.default"
            assert [str(u.target) for u in node.users] == [Q], "one quantizer after the activation, none before"


def test_simulation_is_close_to_float_at_8_bits_and_worse_at_4():
    model, x = mobile_block()
    with torch.no_grad():
        ref = model(x)
    w8 = sqnr_db(ref, qcompiler.quantize(model, x, calibration=[x]).simulate(x))
    w4 = sqnr_db(ref, qcompiler.quantize(model, x, bits=4, calibration=[x]).simulate(x))
    assert w8 > 30 and w4 < w8


def test_shared_quantizer_reuses_its_input_parameters():
    model, x = mobile_block()
    qm = qcompiler.quantize(model, x, calibration=[x])
    qs = [n for n in qm.graph.graph.nodes if str(n.target) == Q]
    pool_q = next(n for n in qs if str(n.args[0].target) == "aten.mean.dim")
    dw_q = next(n for n in qs if n.args[0].name == "hardtanh_1")
    assert pool_q.args[1:] == dw_q.args[1:]


def test_dataloader_of_images_and_labels_calibrates():
    model, x = mobile_block()
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=3)
    qm = qcompiler.quantize(model, x[:1], calibration=loader, progress=False)
    assert qm.report["calibrate"].counts["batches"] == 3


def test_empty_calibration_loader_is_an_error():
    model, x = mobile_block()
    with pytest.raises(qcompiler.PassError, match="yielded no batches"):
        qcompiler.quantize(model, x, calibration=[])


def test_nan_in_calibration_data_names_the_node():
    model, x = mobile_block()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(qcompiler.PassError, match=r"NaN in the output of node '\w+'") as info:
        qcompiler.quantize(model, x, calibration=[x, bad])
    assert isinstance(info.value.__cause__, CalibrationError)


def test_calibration_batch_of_the_wrong_form_is_an_error():
    model, x = mobile_block()
    with pytest.raises(qcompiler.PassError, match="calibration batch 0 is a dict"):
        qcompiler.quantize(model, x, calibration=[{"x": x}])


class TwoOddOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = torch.cumsum(self.conv(x), dim=1)
        return torch.softmax(y, dim=1)


def test_unsupported_ops_are_listed_all_at_once_with_the_fix():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(UnsupportedOpError) as info:
        qcompiler.quantize(TwoOddOps().eval(), x)
    msg = str(info.value)
    assert "2 node(s) have no integer form" in msg
    assert "'cumsum' (aten.cumsum.default) at test_quantize.py:93 `y = torch.cumsum(self.conv(x), dim=1)`" in msg
    assert "(aten._softmax.default) at test_quantize.py:94" in msg
    assert "overrides={'cumsum': 'float', '_softmax': 'float'}" in msg
    assert "QuantScheme(fallback_ops=frozenset({'aten._softmax.default', 'aten.cumsum.default'}))" in msg
    assert info.value.overrides == {"cumsum": "float", "_softmax": "float"}
    qm = qcompiler.quantize(TwoOddOps().eval(), x, overrides=info.value.overrides)  # the remedy works
    assert torch.equal(qm.interpret(x), qm.simulate(x))


def test_fallback_ops_run_in_float_between_dq_and_q():
    x = torch.randn(2, 3, 4, 4)
    scheme = host_scheme()
    scheme = type(scheme)(fallback_ops=frozenset({"aten.cumsum.default", "aten._softmax.default"}))
    model = TwoOddOps().eval()
    qm = qcompiler.quantize(model, x, scheme=scheme)
    for node in qm.graph.graph.nodes:
        if str(node.target) in ("aten.cumsum.default", "aten._softmax.default"):
            assert "dequantize" in str(node.args[0].target)
            assert [str(u.target) for u in node.users] == [Q]
    with torch.no_grad():
        assert sqnr_db(model(x), qm.simulate(x)) > 25


def test_overrides_by_node_name_and_op_type():
    model, x = mobile_block()
    qm = qcompiler.quantize(model, x, overrides={"linear": "float", "aten.hardtanh.default": {"activations": activation_spec(16)}})
    lin = next(n for n in qm.graph.graph.nodes if n.name == "linear")
    assert "dequantize_per_channel" not in str(lin.args[1].target)  # float weights
    for node in qm.graph.graph.nodes:
        if str(node.target) == Q and str(node.args[0].target) == "aten.hardtanh.default":
            assert node.args[-1] == torch.int16
    with pytest.raises(qcompiler.PassError, match=r"'lineer' \(did you mean 'linear'\?\)"):
        qcompiler.quantize(model, x, overrides={"lineer": "float"})


def test_constant_zero_activation_is_handled():
    class Zeros(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    model = Zeros().eval()
    x = torch.randn(2, 3, 5, 5)
    qm = qcompiler.quantize(model, x)
    out = qm.simulate(x)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=qm.qparams["linear"].scalar()[0], rtol=0)


def test_trainable_simulation_passes_gradients_and_matches_the_simulation():
    model, x = mobile_block()
    qm = qcompiler.quantize(model, x, calibration=[x])
    trainable = qm.trainable()
    params = [p for p in trainable.parameters() if p.requires_grad]
    assert len(params) == 3  # conv, depthwise conv, linear weights
    out = trainable(x)
    assert sqnr_db(qm.simulate(x), out) > 40
    out.square().sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert qcompiler.count_ops(qm.graph)["quantized_decomposed.quantize_per_tensor.tensor"] == 5  # the simulation is untouched


@pytest.mark.parametrize("key", ["aten.mean.dim", "mean", "convolution_1"])
def test_a_float_override_runs_in_float_in_the_integer_program_too(key):
    """An op kept in float by an override is a float op between dequantize and quantize in
    the program as in the simulation, not silently converted to an integer op."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    x = torch.randn(2, 3, 10, 10)
    qm = qcompiler.quantize(model, x, overrides={key: "float"}, progress=False)
    kept = [n for n in qm.program.graph.nodes if n.meta.get(meta.FLOAT_FALLBACK)]
    expected = torch.ops.aten.convolution.default if key == "convolution_1" else torch.ops.aten.mean.dim
    assert [n.target for n in kept] == [expected]
    integer_targets = {n.target for n in qm.program.graph.nodes}
    assert (torch.ops.qcompiler.mean.default in integer_targets) == (key == "convolution_1")
    out, sim = qm.interpret(x), qm.simulate(x)
    step = max(p.scalar()[0] for p in qm.qparams.values())
    assert (out - sim).abs().max() <= 4 * step


def test_every_qcompiler_metadata_key_on_the_graphs_is_declared_in_meta():
    declared = {v for k, v in vars(meta).items() if k.isupper() and isinstance(v, str)}
    assert len(declared) == len([k for k in vars(meta) if k.isupper()]), "two constants name one key"
    model, x = mobile_block()
    qm = qcompiler.quantize(model, x, calibration=[x], passes=["fold_bn", "equalize"],
                            overrides={"linear": "float"})
    used = set()
    for gm in (qm.float_graph, qm.graph, qm.program):
        used |= set(gm.meta)
        for node in gm.graph.nodes:
            used |= set(node.meta)
    ours = {k for k in used if k.startswith("qc_") or k == meta.BN_STATS}
    assert {meta.BN_STATS, meta.FLOAT_WEIGHT, meta.SPEC, meta.SIM_NODE, meta.QPARAMS, meta.SCHEME, meta.FLOAT_FALLBACK} <= ours
    assert ours <= declared, f"undeclared metadata keys: {sorted(ours - declared)}"
