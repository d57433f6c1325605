import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import qcompiler
from qcompiler import Pass, PassContext, PassError, PassManager, PassOrderError, PassResult, register_pass
from qcompiler.graph import aten
from qcompiler.pass_manager import REGISTRY, ContractError, Problem, checks_after_every_pass, order_passes
from qcompiler.testing import assert_op_counts


@pytest.fixture
def registry_sandbox():
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


def small_graph():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    return qcompiler.capture(model, x), x


def make_pass(name, after=(), before=(), preserves="function", run=None):
    cls = type(name.title().replace("_", ""), (Pass,), {"preserves": preserves,
                                                         "run": run or (lambda self, gm, ctx: gm)})
    return register_pass(after=after, before=before, name=name)(cls)


def test_order_follows_constraints_and_otherwise_the_given_order(registry_sandbox):
    make_pass("p_a")
    make_pass("p_b", after=["p_c"])
    make_pass("p_c")
    make_pass("p_d", before=["p_a"])
    order = [p.name for p in order_passes([REGISTRY[n]() for n in ["p_a", "p_b", "p_c", "p_d"]])]
    assert order.index("p_c") < order.index("p_b")
    assert order.index("p_d") < order.index("p_a")
    assert order == ["p_c", "p_b", "p_d", "p_a"] or order == ["p_d", "p_a", "p_c", "p_b"]


def test_builtin_order_is_fold_bn_then_equalize_whatever_the_listing():
    assert PassManager(["equalize", "fold_bn"]).names == ["fold_bn", "equalize"]


def test_cycle_is_an_error_naming_the_passes(registry_sandbox):
    make_pass("cyc_x", after=["cyc_y"])
    make_pass("cyc_y", after=["cyc_z"])
    make_pass("cyc_z", after=["cyc_x"])
    with pytest.raises(PassOrderError, match="cycle") as info:
        PassManager(["cyc_x", "cyc_y", "cyc_z"])
    for name in ("cyc_x", "cyc_y", "cyc_z"):
        assert name in str(info.value)


def test_unknown_pass_name_is_an_error_with_suggestion():
    with pytest.raises(PassOrderError, match=r"no pass named 'fold_nb' \(did you mean 'fold_bn'\?\)"):
        PassManager(["fold_nb"])


def test_constraint_on_a_missing_pass_is_an_error(registry_sandbox):
    make_pass("needs_ghost", after=["equalise"])
    with pytest.raises(PassOrderError, match="'needs_ghost' is declared to run after 'equalise'.*did you mean 'equalize'"):
        PassManager(["needs_ghost"])


def test_verify_records_error_and_report_has_a_row_per_pass():
    gm, x = small_graph()
    result = PassManager(["fold_bn", "equalize"], verify=True).run(gm, (x,))
    report = result.report
    assert [r.name for r in report.records] == ["fold_bn", "equalize"]
    for r in report.records:
        assert r.rel_error is not None and r.rel_error < 1e-4
        assert r.changed_ops > 0 and r.changed_tensors > 0 and r.seconds >= 0
    text = str(report)
    assert "fold_bn" in text and "equalize" in text and "rel err" in text


def test_verify_raises_when_a_pass_breaks_its_declared_tolerance(registry_sandbox):
    def double_outputs(self, gm, ctx):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        src = out.args[0][0]
        with gm.graph.inserting_before(out):
            mul = gm.graph.call_function(aten.mul.Tensor, (src, 2.0))
        out.args = ((mul,),)
        return gm

    make_pass("liar", run=double_outputs)
    gm, x = small_graph()
    with pytest.raises(PassError, match="'liar' declares that it preserves the function"):
        PassManager(["liar"], verify=True).run(gm, (x,))


def test_lint_catches_a_pass_that_leaves_a_dangling_attribute(registry_sandbox):
    def break_graph(self, gm, ctx):
        node = next(n for n in gm.graph.nodes if n.op == "get_attr")
        node.target = "no_such_weight"
        return gm

    make_pass("breaker", run=break_graph)
    gm, x = small_graph()
    with pytest.raises(PassError, match="(?s)'breaker' left a malformed graph.*no_such_weight"):
        PassManager(["breaker"]).run(gm, (x,))


def test_a_failing_pass_is_named_with_its_history(registry_sandbox):
    def boom(self, gm, ctx):
        raise ValueError("kaput")

    make_pass("exploder", after=["fold_bn"], run=boom)
    gm, x = small_graph()
    with pytest.raises(PassError, match=r"(?s)pass 'exploder' failed \(passes run before it: 'fold_bn'\).*ValueError: kaput"):
        PassManager(["fold_bn", "exploder"]).run(gm, (x,))


def test_user_pass_runs_beside_builtins_with_constraints(registry_sandbox):
    seen = []

    def spy(self, gm, ctx):
        seen.append(sum(1 for n in gm.graph.nodes if "batch_norm" in str(n.target)))
        return PassResult(gm, False, "looked")

    make_pass("spy_pass", after=["fold_bn"], before=["equalize"], run=spy)
    gm, x = small_graph()
    result = PassManager(["equalize", "spy_pass", "fold_bn"], verify=True).run(gm, (x,))
    assert [r.name for r in result.report.records] == ["fold_bn", "spy_pass", "equalize"]
    assert seen == [0], "the user pass must see the graph after fold_bn"
    assert result.report["spy_pass"].summary == "looked" and not result.report["spy_pass"].modified


def test_steps_repeat_until_nothing_changes():
    gm, x = small_graph()
    result = PassManager(["fold_bn"], steps=5).run(gm, (x,))
    assert [r.modified for r in result.report.records] == [True, False]


def test_passes_leave_unknown_ops_alone():
    class WithOddOps(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = torch.cumsum(self.bn(self.conv(x)), dim=1)  # no pass knows cumsum
            return self.conv2(torch.special.erf(y))

    model = WithOddOps().eval()
    x = torch.randn(2, 3, 5, 5)
    gm = qcompiler.capture(model, x)
    result = PassManager(["fold_bn", "equalize"], verify=True).run(gm, (x,))
    assert_op_counts(result.gm, {"aten.cumsum.default": 1, "aten.erf.default": 1,
                                 "aten._native_batch_norm_legit_no_training.default": 0, "aten.convolution.default": 2})
    assert result.report["fold_bn"].counts == {"folded": 1, "left_alone": 0}
    torch.testing.assert_close(result.gm(x), model(x), rtol=1e-4, atol=1e-5)


def test_verify_without_inputs_is_a_clear_error():
    gm, _ = small_graph()
    gm.meta.pop(qcompiler.meta.EXAMPLE_INPUTS)
    with pytest.raises(PassError, match="verify=True needs example inputs"):
        PassManager(["fold_bn"], verify=True).run(gm)


def test_register_pass_rejects_non_passes():
    with pytest.raises(TypeError, match="subclass of qcompiler.Pass"):
        register_pass()(object)


def test_the_test_suite_verifies_the_graph_after_every_pass_even_without_lint(registry_sandbox):
    def break_graph(self, gm, ctx):
        node = next(n for n in gm.graph.nodes if n.op == "get_attr")
        node.target = "no_such_weight"
        return gm

    make_pass("quiet_breaker", run=break_graph)
    gm, x = small_graph()
    with pytest.raises(PassError, match="(?s)'quiet_breaker' left a malformed graph.*no_such_weight"):
        PassManager(["quiet_breaker"], lint=False).run(gm, (x,))  # tests/conftest.py's fixture runs the verifier


def test_checks_after_every_pass_run_and_a_check_of_the_wrong_shape_is_a_type_error():
    seen = []
    gm, x = small_graph()
    with checks_after_every_pass(lambda g: seen.append(len(g.graph.nodes))):
        PassManager(["fold_bn", "equalize"], lint=False).run(gm, (x,))
    assert len(seen) == 2
    with pytest.raises(TypeError, match="exactly one argument"):
        PassManager(["fold_bn"]).add_checks(lambda gm, extra: None)


def test_requires_lists_every_problem_at_once_with_its_fix(registry_sandbox):
    class Picky(Pass):
        preserves = "nothing"

        def requires(self, gm, ctx):
            return [Problem("no calibration data", "give PassContext(calibration=...)"),
                    Problem("no float graph", "give PassContext(float_graph=...)")]

        def run(self, gm, ctx):
            raise AssertionError("run must not be reached")

    register_pass(after=["fold_bn"], name="picky")(Picky)
    gm, x = small_graph()
    with pytest.raises(ContractError, match=r"(?s)pass 'picky' cannot run on this graph \(requires, 2 problem\(s\); "
                       r"passes run before it: 'fold_bn'\).*no calibration data\. Fix: give PassContext\(calibration=\.\.\.\)"
                       r".*no float graph\. Fix: give PassContext\(float_graph=\.\.\.\)"):
        PassManager(["fold_bn", "picky"]).run(gm, (x,))


def test_ptq_passes_list_all_their_missing_inputs():
    from qcompiler.passes import BiasCorrection, Calibrate, InsertQuantizers

    gm, x = small_graph()
    with pytest.raises(ContractError) as info:
        PassManager(["fold_bn", InsertQuantizers(), Calibrate([x]), BiasCorrection()]).run(gm, (x,))
    assert [p.what.split(" (")[0] for p in info.value.problems] == [
        "bias_correction needs the float graph", "bias_correction needs calibration data"]


def test_the_old_state_keys_are_refused_with_the_field_to_use():
    with pytest.raises(PassError, match=r"state\['calibration'\] -> PassContext\(calibration=\.\.\.\)"):
        PassContext(state={"calibration": []})
