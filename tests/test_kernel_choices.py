"""Which kernel every conv2d / linear node got, and why not ours (targets/kernel_lowering.py):
``runtime.kernel_choices`` on host and arm_cpu builds, and kept through export and load
(the manifest's ``kernels``, qcompiler/kernel_report.py)."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("tvm")

import qcompiler  # noqa: E402
from qcompiler.export import ExportError  # noqa: E402
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
    return qcompiler.quantize(_model(), x, ptq="minmax", calibration=[x, torch.randn(2, 3, 8, 8)]), x


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


def _three_convs():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


def _kernel_column(report) -> list[tuple]:
    return [(r.node, r.op, r.kernel, r.fallback) for r in report.layers]


def _fallback_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if ", not our kernel, because: " in line]


@pytest.mark.parametrize("make_model, activation_bits", [(_model, 8), (_three_convs, 16)], ids=["intrinsic", "fallback"])
def test_export_and_load_keep_every_layers_kernel_and_why_not_ours(make_model, activation_bits, tmp_path):
    """The manifest records the kernel each layer got (the runtime's choices; "generic" for
    layers with no kernel of ours), and the loaded export's report shows the compiled
    model's kernel column and fallback lines: our kernels at 8 bits, the generic lowering
    with the ExactnessError's text at 16 bits."""
    x = torch.randn(2, 3, 8, 8)
    cm = qcompiler.qcompile(make_model(), x, progress=False, activation_bits=activation_bits)
    out = cm.export(tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 2
    choices = cm.runtime.kernel_choices
    recorded = {e["layer"]: (e["kernel"], e["reason"]) for e in manifest["kernels"]}
    assert [e["layer"] for e in manifest["kernels"]] == [r.node for r in cm.report().layers]
    assert {k: v for k, v in recorded.items() if k in choices} == {k: (c.kernel, c.reason) for k, c in choices.items()}
    assert all(v == ("generic", None) for k, v in recorded.items() if k not in choices)
    weighted = [recorded[n] for n in _weighted_nodes(cm.qm.program)]
    if activation_bits == 16:
        assert weighted and all(k == "generic" and "only uint8/int8 are supported" in r for k, r in weighted)
    elif host.host_has_avx2():
        assert sorted(k for k, _ in weighted) == sorted(["x86 vpmaddwd gemm-conv (im2col)", "x86 vpmaddwd depthwise",
                                                         "x86 vpmaddwd gemm-conv (pointwise)", "x86 vpmaddwd dense"])
        assert all(r is None for _, r in weighted)
    loaded = qcompiler.load(out)
    assert torch.equal(loaded(x), cm(x))
    assert _kernel_column(loaded.report()) == _kernel_column(cm.report())
    fresh_lines = _fallback_lines(str(cm.report()))
    assert _fallback_lines(str(loaded.report())) == fresh_lines == _fallback_lines((out / "report.txt").read_text())
    assert bool(fresh_lines) == (activation_bits == 16 or not host.host_has_avx2())


def test_a_manifest_without_kernel_choices_loads_and_its_report_says_so(tmp_path):
    """A version-1 manifest (written before kernel choices were recorded) loads and runs;
    its report has no kernel column and says why. A malformed field names the file."""
    x = torch.randn(2, 3, 8, 8)
    cm = qcompiler.qcompile(_three_convs(), x, progress=False)
    out = cm.export(tmp_path / "out")
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["kernels"]
    path.write_text(json.dumps({**manifest, "version": 1}))
    loaded = qcompiler.load(out)
    assert torch.equal(loaded(x), cm(x))
    report = loaded.report()
    assert report.layers == []
    assert f"{path} records no kernel choices (manifest format version 1" in str(report)
    assert "export the model again" in str(report)
    path.write_text(json.dumps({**manifest, "kernels": [{"layer": "convolution", "kernel": 3}]}))
    with pytest.raises(ExportError, match=r"manifest\.json: its 'kernels' field is not a list"):
        qcompiler.load(out).report()
