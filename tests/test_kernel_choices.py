"""Which kernel every conv2d / linear node got, and why not ours (targets/kernel_lowering.py):
``runtime.kernel_choices`` on host and arm_cpu builds."""
import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("tvm")

import qcompiler  # noqa: E402
from qcompiler.targets import host  # noqa: E402
from qcompiler.targets.arm_cpu import arm_lowerings  # noqa: E402
from qcompiler.targets.kernel_lowering import KernelChoice  # noqa: E402
from qcompiler.targets.lower import lower  # noqa: E402


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                         nn.ReLU(), nn.Conv2d(16, 8, 1), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(8 * 2 * 2, 5)).eval()


def _weighted_nodes(program) -> list[str]:
    return [n.name for n in program.graph.nodes
            if str(n.target) in ("qcompiler.conv2d.default", "qcompiler.linear.default")]


@pytest.fixture(scope="module")
def quantized():
    x = torch.randn(2, 3, 8, 8)
    return qcompiler.quantize(_model(), x, calibration=[x, torch.randn(2, 3, 8, 8)]), x


def test_a_normal_build_records_our_kernel_for_every_conv_and_linear(quantized):
    qm, x = quantized
    runtime = host.compile_host(qm.program, (x,))
    choices = runtime.kernel_choices
    assert set(choices) == set(_weighted_nodes(qm.program))
    kernels = sorted(c.kernel for c in choices.values())
    assert kernels == sorted(["x86 vpmaddwd gemm-conv (im2col)", "x86 vpmaddwd depthwise",
                              "x86 vpmaddwd gemm-conv (pointwise)", "x86 vpmaddwd dense"]), kernels
    assert all(c.reason is None and not c.is_fallback for c in choices.values())
    assert np.array_equal(runtime.run(x)[0], qm.interpret(x).numpy())


def test_a_cpu_without_avx2_records_the_generic_lowering_and_why(quantized, monkeypatch):
    qm, x = quantized
    monkeypatch.setattr(host, "host_has_avx2", lambda: False)
    runtime = host.compile_host(qm.program, (x,))
    assert set(runtime.kernel_choices) == set(_weighted_nodes(qm.program))
    assert set(runtime.kernel_choices.values()) == {KernelChoice("generic", "this CPU has no AVX2")}
    assert np.array_equal(runtime.run(x)[0], qm.interpret(x).numpy())


def test_an_exactness_error_is_recorded_as_the_reason():
    """16-bit activations: our 8-bit kernels refuse them (ExactnessError), the generic
    lowering takes the convs, and the error's text is the recorded reason."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    qm = qcompiler.quantize(model, x, activation_bits=16)
    runtime = host.compile_host(qm.program, (x,))
    choices = runtime.kernel_choices
    assert set(choices) == set(_weighted_nodes(qm.program)) and choices
    for choice in choices.values():
        assert choice.is_fallback and "only uint8/int8 are supported" in choice.reason, choice
    assert np.array_equal(runtime.run(x)[0], qm.interpret(x).numpy())


def test_scheduled_false_records_the_default_build(quantized):
    qm, x = quantized
    runtime = host.compile_host(qm.program, (x,), scheduled=False)
    assert {c.kernel for c in runtime.kernel_choices.values()} == {"generic"}
    assert all("scheduled=False" in c.reason for c in runtime.kernel_choices.values())


def test_arm_lowerings_record_the_sdot_kernels_and_the_generic_variant(quantized):
    qm, x = quantized
    choices, generic = {}, {}
    lower(qm.program, (x,), target_lowerings=arm_lowerings("arm_cpu", choices))
    lower(qm.program, (x,), target_lowerings=arm_lowerings("arm_cpu_a53", generic))
    assert sorted(c.kernel for c in choices.values()) == sorted(
        ["arm sdot gemm-conv (im2col)", "arm sdot depthwise", "arm sdot gemm-conv (pointwise)", "arm sdot dense"])
    assert set(generic) == set(choices) == set(_weighted_nodes(qm.program))
    assert all(c.is_fallback and "no dotprod" in c.reason for c in generic.values())


def test_the_compile_report_shows_every_layers_kernel_and_why_a_layer_is_not_ours():
    """cm.report(): our kernel for 8-bit convs; with 16-bit activations the generic
    lowering, and the ExactnessError's text in the report's text."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    report = qcompiler.qcompile(model, x, progress=False).report()
    kernels = {r.node: r.kernel for r in report.layers if r.op == "conv2d"}
    assert sorted(kernels.values()) == ["x86 vpmaddwd gemm-conv (im2col)", "x86 vpmaddwd gemm-conv (pointwise)"] \
        if host.host_has_avx2() else ["generic", "generic"]
    assert all(r.fallback is None for r in report.layers) or not host.host_has_avx2()
    wide = qcompiler.qcompile(model, x, progress=False, activation_bits=16).report()
    text = str(wide)
    for row in (r for r in wide.layers if r.op == "conv2d"):
        assert row.kernel == "generic" and "only uint8/int8 are supported" in row.fallback
        assert f"{row.node} (conv2d): generic, not our kernel, because: {row.fallback}" in text
