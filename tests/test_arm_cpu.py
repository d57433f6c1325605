"""The arm_cpu target (targets/arm_cpu.py): aarch64 code, run under qemu-aarch64 by the
project's runner, equal to the interpreter bit for bit; instruction counts reproducible.
Needs the set-up's tools (scripts/setup-arm.sh, run by `make test`)."""
import numpy as np
import pytest
import torch
from torch.utils._pytree import tree_leaves

import qcompiler
from qcompiler.targets.arm_cpu import ArmToolsError, compile_arm

from test_integer_program import ALL_INTEGER_OPS, EveryOp
from test_lower_host import integer_ops


@pytest.fixture(scope="module")
def every_op_arm():
    model = EveryOp().eval()
    x = torch.randn(2, 3, 16, 16)
    qm = qcompiler.quantize(model, x, calibration=[x, torch.randn(4, 3, 16, 16)])
    assert ALL_INTEGER_OPS <= integer_ops(qm.program)
    return qm, x, compile_arm(qm.program, (x,))


def test_every_integer_op_is_bit_exact_under_qemu(every_op_arm):
    qm, x, runtime = every_op_arm
    gen = torch.Generator().manual_seed(5)
    for i, probe in enumerate([x, torch.randn(x.shape, generator=gen) * 10, torch.full(x.shape, 1e6), torch.zeros(x.shape)]):
        reference = [t.numpy() for t in tree_leaves(qm.interpret(probe))]
        built = runtime.run(probe)
        assert len(built) == len(reference)
        for r, b in zip(reference, built):
            assert r.dtype == b.dtype and r.shape == b.shape
            assert np.array_equal(r, b), f"probe {i}: {int((r != b).sum())} of {r.size} differ"


def test_instruction_counts_are_exactly_reproducible(every_op_arm):
    _, x, runtime = every_op_arm
    first, second = runtime.count(x), runtime.count(x)
    assert first == second
    assert first["total"] == sum(first[k] for k in ("sdot", "smmla", "simd", "loadstore", "scalar")) > 10_000


def test_qcompile_for_arm_cpu_runs_aarch64_code(every_op_arm):
    qm, x, _ = every_op_arm
    cm = qm.compile("arm_cpu")
    assert all(torch.equal(a, b) for a, b in zip(cm(x), qm.interpret(x)))
    with pytest.raises(qcompiler.QCompilerError, match="expected float32"):
        cm(x.double())


def test_missing_tools_are_named_with_the_fix(every_op_arm, tmp_path, monkeypatch):
    qm, x, _ = every_op_arm
    monkeypatch.setenv("QCOMPILER_ARM_TOOLS", str(tmp_path))
    with pytest.raises(ArmToolsError, match=r"runner.*scripts/setup-arm\.sh"):
        compile_arm(qm.program, (x,))
