"""CompiledModel, qcompile and the qcompile command on the host target: exact against the
interpreter, clear errors at the call, atomic export."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler.compiled import ExportError, integer_core
from qcompiler.errors import QCompilerError
from qcompiler.interpreter import interpret
from qcompiler.targets import TargetError


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Hardswish(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def compiled():
    x = torch.randn(2, 3, 12, 12)
    cm = qcompiler.qcompile(small_cnn(), x, target="host", bits=8, ptq="minmax", calibration=[x, torch.randn(2, 3, 12, 12)])
    return cm, x


def test_qcompile_equals_the_interpreter_bit_for_bit(compiled):
    cm, x = compiled
    for probe in (x, 3 * torch.randn_like(x)):
        assert torch.equal(cm(probe), cm.qm.interpret(probe))


def test_run_int_takes_and_returns_the_integer_tensors(compiled):
    cm, x = compiled
    (enc,) = cm.input_encodings
    q = cm._quantize_input(x, enc)
    assert q.dtype == np.dtype(enc["dtype"])
    core, _, out_enc = integer_core(cm.qm.program)
    expected = interpret(core, q)
    got = cm.run_int(q)
    assert got.dtype != torch.float32 and torch.equal(got, expected)
    # dequantized at the edge, it is what cm(x) returns
    s, z = out_enc[0]["scale"], out_enc[0]["zero_point"]
    assert torch.equal((got.float() - z) * np.float32(s), cm(x))


def test_wrong_shape_or_dtype_says_expected_and_got(compiled):
    cm, x = compiled
    with pytest.raises(QCompilerError, match=r"expected float32 \[2, 3, 12, 12\], got float32 \[1, 3, 12, 12\].*static"):
        cm(x[:1])
    with pytest.raises(QCompilerError, match=r"expected float32 \[2, 3, 12, 12\], got float64"):
        cm(x.double())
    with pytest.raises(QCompilerError, match="takes 1 input"):
        cm(x, x)
    with pytest.raises(QCompilerError, match=r"run_int: input 0 expected uint8"):
        cm.run_int(x)


def test_unknown_target_is_named_with_the_known_ones():
    with pytest.raises(TargetError, match=r"'hots'.*did you mean 'host'.*known targets: host"):
        qcompiler.qcompile(small_cnn(), torch.randn(1, 3, 8, 8), target="hots")


def test_report_has_every_layer_with_time_error_and_bytes(compiled):
    cm, _ = compiled
    report = cm.report()
    ops = [r.op for r in report.layers]
    assert ops.count("conv2d") == 2 and "linear" in ops
    conv = next(r for r in report.layers if r.op == "conv2d")
    assert conv.macs == 2 * 8 * 12 * 12 * 3 * 9 and conv.weight_bytes == 8 * 3 * 9 + 8 * 4  # int8 weights, int32 bias
    assert all(r.time_ms is not None for r in report.layers if r.op in ("conv2d", "linear"))
    assert all(r.sqnr_db is not None and r.sqnr_db > 10 for r in report.layers if r.op in ("conv2d", "linear"))
    text = str(report)
    assert "pass report" in text and "fold_bn" in text and "MMACs" in text


def test_export_writes_library_encodings_and_report_atomically(compiled, tmp_path):
    cm, x = compiled
    out = cm.export(tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["encodings.json", "manifest.json", "model.so", "report.txt"]
    enc = json.loads((out / "encodings.json").read_text())
    assert enc["activations"] and all({"scale", "zero_point", "bits", "dtype"} <= set(v) for v in enc["activations"].values())
    assert all(v["bits"] == 8 and v["dtype"] == "int8" and len(v["scales"]) == len(v["zero_points"]) for v in enc["weights"].values())
    assert enc["inputs"][0]["dtype"] == "uint8"
    # a failed export leaves the previous export untouched and no staging directory behind
    before = sorted(os.listdir(tmp_path))
    original = cm.runtime.export_library

    def broken(path):
        raise OSError(28, "No space left on device")
    cm.runtime.export_library = broken
    try:
        with pytest.raises(ExportError, match="No space left"):
            cm.export(tmp_path / "model")
    finally:
        cm.runtime.export_library = original
    assert sorted(os.listdir(tmp_path)) == before
    assert (out / "model.so").exists()


def test_export_to_an_unwritable_place_is_a_clear_error(compiled, tmp_path):
    cm, _ = compiled
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ExportError, match="cannot export to .*a_file"):
        cm.export(blocker / "model")


def cli_model():
    return small_cnn()


def test_command_line_compiles_and_prints_the_report(tmp_path, capsys):
    from qcompiler.cli import main

    code = main(["tests.test_compiled:cli_model", "--input-shape", "1,3,8,8", "--export", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "layers of the integer program (host)" in printed and "exported to" in printed
    assert (tmp_path / "out" / "model.so").exists()
    assert main(["tests.test_compiled:no_such_factory", "--input-shape", "1,3,8,8"]) == 2
    assert "has no 'no_such_factory'" in capsys.readouterr().err
