"""The op registry (qcompiler/ops): one row per op is the only table, a bad row is refused
with every problem listed, and an op added as one file plus one row
(upsample_nearest2d) is exact against the simulation and bit-exact on the host."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler.ops import OPS, OWN, OpDef, OpRegistryError, Rule, Source, get_op, op_kind, qc, register_op, rules_for
from qcompiler.ops import upsample_nearest2d
from qcompiler.interpreter import interpret
from qcompiler.op_check import check_op

aten = torch.ops.aten


def test_every_qcompiler_op_has_one_row_with_a_reference_and_a_lowering():
    defined = {name for name in dir(qc) if isinstance(getattr(qc, name), torch._ops.OpOverloadPacket)}
    rows = {op.name for op in OPS if op.schema is not None}
    assert defined == rows
    for op in OPS:
        assert op.reference is not None and op.lowering is not None, op.name
    sources = [t for op in OPS for t in op.sources]
    assert len(sources) == len(set(sources)), "an ATen op is the source of two rows"


def test_the_kind_of_an_aten_op_is_its_rows_source():
    assert op_kind(aten.convolution.default) == "weighted"
    assert op_kind(aten.upsample_nearest2d.vec) == "passthrough"
    assert op_kind(aten.layer_norm.default) is None
    assert [r.rewrite.__module__ for r in rules_for(aten.mul.Tensor)] == ["qcompiler.ops.add", "qcompiler.ops.mul"]


def test_a_bad_row_is_refused_with_every_problem_listed():
    row = OpDef(name="conv2d", doc="clashes", schema="Tensor x", sources={aten.add.Tensor: Source("mine")},
                rules=(Rule((), None),))
    with pytest.raises(OpRegistryError) as info:
        register_op(row)
    text = str(info.value)
    for part in ("schema 'Tensor x'", "no numpy reference", "kind 'mine'", "already a source of op add",
                 "needs a non-empty pattern", "registered already"):
        assert part in text, text
    assert get_op("conv2d").doc != "clashes"


def test_a_rule_that_declines_leaves_the_op_to_the_next_rule_or_the_float_fallback():
    calls = []

    def decline(cv, match):
        calls.append(match.node.name)
        return None

    register_op(OpDef(name="test_fmax", doc="declines every match", schema="(Tensor a, Tensor b) -> Tensor",
                      reference=np.fmax, out_dtype="input", lowering=lambda ctx, node, args, kwargs: None,
                      sources={aten.fmax.default: Source(OWN)}, rules=(Rule((aten.fmax.default,), decline),)), replace=True)

    class Fmax(nn.Module):
        def forward(self, x):
            return torch.fmax(x, x * 0.5)

    x = torch.randn(2, 8)
    qm = qcompiler.quantize(Fmax().eval(), x)
    fallback = [n for n in qm.program.graph.nodes if n.meta.get("qc_float_fallback")]  # the program is built here
    assert calls == ["fmax"]
    assert [n.target for n in fallback] == [aten.fmax.default]
    assert torch.equal(qm.interpret(x), qm.simulate(x))


class Upsampled(nn.Module):
    def __init__(self, upsample: nn.Module):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = upsample
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.up(self.conv(x))))


@pytest.mark.parametrize("upsample", [nn.Upsample(scale_factor=2), nn.Upsample(size=(7, 9)), nn.Upsample(scale_factor=1.5),
                                      nn.Upsample(scale_factor=(1, 3))],
                         ids=["scale2", "size7x9", "scale1.5", "scale1x3"])
def test_upsample_nearest2d_is_exact_and_bit_exact_on_the_host(upsample):
    x = torch.randn(2, 3, 5, 6)
    found = check_op(Upsampled(upsample).eval(), (x,), "upsample_nearest2d", targets=("host",))
    assert found.exact_targets == ["host"]
    program = found.qm.program
    (node,) = program.graph.find_nodes(op="call_function", target=qc.upsample_nearest2d.default)
    codes = {}
    interpret(program, x, record=codes)
    source = codes[node.args[0].name]
    assert np.array_equal(codes[node.name], upsample(torch.from_numpy(source.astype(np.float32))).numpy().astype(source.dtype))


def test_upsample_index_tables_follow_torch_for_odd_sizes():
    call = torch.fx.Graph()
    x = call.placeholder("x")
    x.meta["val"] = torch.empty(1, 1, 5, 7)
    up = call.call_function(aten.upsample_nearest2d.vec, (x, [8, 11], None))
    rows, cols = upsample_nearest2d.source_indices(up)
    grid = torch.arange(35, dtype=torch.float32).reshape(1, 1, 5, 7)
    expected = torch.nn.functional.interpolate(grid, size=(8, 11), mode="nearest")[0, 0]
    assert np.array_equal(grid[0, 0].numpy()[rows][:, cols], expected.numpy())


def test_a_schema_torch_cannot_parse_is_refused_naming_the_op():
    row = OpDef(name="test_bad_schema", doc="unknown type", schema="(Tensor a, Tensr b) -> Tensor", reference=np.add)
    with pytest.raises(OpRegistryError, match=r"'test_bad_schema': torch.library cannot parse its schema"):
        register_op(row)


def test_a_layout_op_added_as_one_row_is_checked_by_name():
    """aten.flip as a user's layout row (docs/custom-op.md): the codes are copied, so zero
    steps from the simulation, and the host build is bit-exact."""
    from qcompiler.ops.layout import layout_op

    def flip(ctx, node, args, kwargs):
        x = ctx.expr(args[0])
        for d in args[1]:
            x = ctx.emit(ctx.R.flip(x, d % ctx.ndim(x)))
        return x

    register_op(layout_op(aten.flip.default, lambda x, dims: np.flip(x, axis=tuple(dims)), flip), replace=True)

    class Flipped(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(torch.flip(self.a(x), dims=(1, 3)))

    found = check_op(Flipped().eval(), (torch.randn(2, 3, 6, 7),), "aten.flip.default", targets=("host",), max_steps=1)
    assert found.uses == 1 and found.exact_targets == ["host"]
    with pytest.raises(AssertionError, match=r"no 'flip' node; its ops: \['aten.flip.default', 'conv2d'"):
        check_op(Flipped().eval(), (torch.randn(2, 3, 6, 7),), "flip", targets=())
