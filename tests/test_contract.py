"""The quantize contract (docs/quantization.md): every node quantizes to an integer form, or
``quantize`` itself raises one UnsupportedOpError naming each node, its op, the line of the
model and the override that keeps it in float; that override then works, bit-exact on the
host. Also: tuple-valued ops (split, norms, a BatchNorm with no conv before it), override
keys that match nothing, and the minimum scale."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler import meta
from qcompiler.errors import ConversionError, OverrideError, UnsupportedOpError
from qcompiler.ops import OWN, OpDef, Rule, Source, register_op
from qcompiler.testing import op_counts

aten = torch.ops.aten


class EveryKind(nn.Module):
    """One node of each quantization kind: weighted (conv), activation (relu6 after an add,
    standalone), own (add), shared (avg pool), passthrough (max pool, flatten), a
    tuple-valued passthrough op (chunk → split_with_sizes + getitem) and a tuple-valued op
    with no integer form (layer_norm)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.mp = nn.MaxPool2d(2)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        y = self.conv(x)
        a, b = y.chunk(2, dim=1)
        y = nn.functional.relu6(a + b)
        y = self.mp(self.pool(y))
        y = self.norm(y.flatten(2))
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def every_kind():
    x = torch.randn(2, 3, 8, 8)
    model = EveryKind().eval()
    with pytest.raises(UnsupportedOpError) as info:
        qcompiler.quantize(model, x)
    return model, x, info.value


def test_a_tuple_valued_op_with_no_integer_form_is_found_by_quantize_with_its_line_and_override(every_kind):
    _, _, err = every_kind
    msg = str(err)
    assert "1 node(s) have no integer form" in msg
    assert "'native_layer_norm' (aten.native_layer_norm.default) at test_contract.py:" in msg
    assert "`y = self.norm(y.flatten(2))`, in module 'norm' (LayerNorm)" in msg
    assert "keep it in float: overrides={'native_layer_norm': 'float'}" in msg
    assert err.overrides == {"native_layer_norm": "float"}


def test_the_errors_own_remedy_is_bit_exact_on_arm_cpu(every_kind):
    model, x, err = every_kind
    cm = qcompiler.qcompile(model, x, target="arm_cpu", overrides=err.overrides)
    assert torch.equal(torch.as_tensor(cm(x)), torch.as_tensor(cm.qm.interpret(x)))


def test_the_errors_own_remedy_works_and_is_bit_exact_on_the_host(every_kind):
    model, x, err = every_kind
    qm = qcompiler.quantize(model, x, overrides=err.overrides)
    counts = op_counts(qm.program)
    assert counts["aten.native_layer_norm.default"] == 1  # the one float op
    assert counts["aten.split_with_sizes.default"] == 1  # chunk runs on codes
    assert max(r.max_diff for r in qm.compare_ops(x)) <= 1
    out = qm.interpret(x)
    assert torch.equal(torch.as_tensor(qm.compile("host")(x)), torch.as_tensor(out))


KINDS = {"convolution": aten.convolution.default, "add": aten.add.Tensor, "hardtanh": aten.hardtanh.default,
         "avg_pool2d": aten.avg_pool2d.default, "max_pool2d_with_indices": aten.max_pool2d_with_indices.default,
         "split_with_sizes": aten.split_with_sizes.default, "linear": aten.linear.default}


@pytest.mark.parametrize("key", list(KINDS))
def test_an_override_keeps_a_node_of_every_kind_in_float(every_kind, key):
    """weighted, own, activation, shared, passthrough, tuple passthrough: each kept in float
    by its override (a node name, or an op's short name), the rest still integer, within one
    step of the simulation."""
    model, x, err = every_kind
    qm = qcompiler.quantize(model, x, overrides={**err.overrides, key: "float"})
    (sim_node,) = qm.graph.graph.find_nodes(op="call_function", target=KINDS[key])
    assert sim_node.meta[meta.KEPT_FLOAT] == "override"
    fallback = {n.target for n in qm.program.graph.nodes if n.meta.get(meta.FLOAT_FALLBACK)}
    assert fallback == {aten.native_layer_norm.default, sim_node.target}
    assert max(r.max_diff for r in qm.compare_ops(x)) <= 1


def test_a_rule_that_raises_at_conversion_is_reported_by_quantize_with_the_remedy():
    """A rule may find only at conversion that its arguments have no integer form; quantize
    converts the graph before it returns, so the error comes from quantize, listing every
    such node at once."""
    def refuse(cv, m):
        raise ConversionError(f"'{m.node.name}': fmax of these operands has no integer form")

    # the row test_ops registers for fmax, replaced (one row per ATen source, whatever the test order)
    register_op(OpDef(name="test_fmax", doc="refuses every match", schema="(Tensor a, Tensor b) -> Tensor",
                      reference=np.fmax, out_dtype="input", lowering=lambda ctx, node, args, kwargs: None,
                      sources={aten.fmax.default: Source(OWN)}, rules=(Rule((aten.fmax.default,), refuse),)), replace=True)

    class TwoFmax(nn.Module):
        def forward(self, x):
            return torch.fmax(torch.fmax(x, x * 0.5), x * 0.25)

    x = torch.randn(2, 8)
    with pytest.raises(UnsupportedOpError) as info:
        qcompiler.quantize(TwoFmax().eval(), x)
    assert "2 node(s) have no integer form" in str(info.value)
    assert "fmax of these operands has no integer form" in str(info.value)
    assert info.value.overrides == {"fmax": "float", "fmax_1": "float"}
    qm = qcompiler.quantize(TwoFmax().eval(), x, overrides=info.value.overrides)
    assert torch.equal(torch.as_tensor(qm.interpret(x)), qm.simulate(x))


@pytest.mark.parametrize("key, close", [("convolutoin", "'convolution'"), ("relu6", "ops in this graph: convolution, hardtanh"),
                                        ("aten.hardtanh.defualt", "did you mean 'aten.hardtanh.default'")])
def test_an_override_key_that_matches_nothing_is_an_error_naming_the_close_names(key, close):
    class Clamped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.act = nn.ReLU6()

        def forward(self, x):
            return self.act(self.conv(x))

    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(OverrideError, match="overrides name nodes or ops that are not in the graph") as info:
        qcompiler.quantize(Clamped().eval(), x, overrides={key: "float"})
    assert close in str(info.value)


class Cancel(nn.Module):
    """A layer whose float output is zero up to float32 rounding: 0.1x + 0.2x − 0.3x."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.1, 0.2, -0.3]]))
        self.head = nn.Linear(1, 2)

    def forward(self, x):
        return self.head(self.fc(x.expand(-1, 3)))


def test_the_minimum_scale_keeps_a_cancelling_layer_within_one_step():
    """Without a minimum scale the layer's range is float32 rounding noise (~1e-8), and the
    simulation sat 128 steps from the integer program's exact 0."""
    x = torch.randn(64, 1)
    qm = qcompiler.quantize(Cancel().eval(), x)
    scale, _ = qm.qparams["linear"].scalar()
    assert scale >= 2.0**-23
    assert max(r.max_diff for r in qm.compare_ops(x)) <= 1


class PreActivation(nn.Module):
    """DenseNet's pattern: a BatchNorm after a concat (no conv to fold it into), then relu;
    and a scaling by a number as MultiheadAttention writes it (aten.mul.Scalar)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(8)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(-1, 1)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        return torch.ops.aten.mul.Scalar(y, 0.125)


def test_a_standalone_batchnorm_takes_the_relu_after_it_into_its_bounds():
    x = torch.randn(2, 3, 6, 6)
    qm = qcompiler.quantize(PreActivation().eval(), x)
    counts = op_counts(qm.program)
    assert counts["qcompiler.batch_norm.default"] == 1 and counts["qcompiler.requantize.default"] == 0, counts
    assert counts["qcompiler.add.default"] == 1  # the mul by a number
    assert max(r.max_diff for r in qm.compare_ops(x)) <= 1
    assert torch.equal(torch.as_tensor(qm.compile("host")(x)), torch.as_tensor(qm.interpret(x)))
