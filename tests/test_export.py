"""cm.export writes only its own files, never loses the user's, and is atomic; qcompiler.load
reads an export back; compiling and exporting print nothing of TVM's or torch's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler.export import ExportError

EXPORTED = {"model.so", "encodings.json", "manifest.json", "report.txt"}


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()


@pytest.fixture(scope="module")
def cm():
    x = torch.randn(1, 3, 8, 8)
    return qcompiler.qcompile(small_model(), x, target="host", bits=8, progress=False)


def tree(path: Path) -> dict:
    """Every file under ``path`` with its bytes, and every directory."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def test_export_into_a_new_directory_makes_parents_and_follows_the_umask(cm, tmp_path):
    old = os.umask(0o022)
    try:
        out = cm.export(tmp_path / "a" / "b" / "out")
    finally:
        os.umask(old)
    assert {p.name for p in out.iterdir()} == EXPORTED
    assert (out.stat().st_mode & 0o777) == 0o755, oct(out.stat().st_mode)
    assert ((tmp_path / "a").stat().st_mode & 0o777) == 0o755
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "qcompiler-export" and set(manifest["files"]) == EXPORTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"], "no staging folder is left behind"


def test_export_refuses_a_directory_holding_other_files_and_leaves_them(cm, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(ExportError, match=r"(?s)out.*keep\.txt.*overwrite=True.*--force"):
        cm.export(out)
    assert tree(tmp_path) == before


def test_export_to_the_working_directory_never_deletes_it(cm, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    with pytest.raises(ExportError, match="holds files qcompiler did not write"):
        cm.export(".")
    for target in (".", ".."):
        with pytest.raises(ExportError, match="working directory"):
            cm.export(target, overwrite=True)
    assert os.getcwd() == str(tmp_path)
    assert tree(tmp_path) == before


def test_export_into_an_empty_working_directory_writes_there(cm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cm.export(".") == tmp_path.resolve()
    assert {p.name for p in tmp_path.iterdir()} == EXPORTED
    assert os.getcwd() == str(tmp_path)


def test_export_over_a_previous_export_replaces_exactly_its_files(cm, tmp_path):
    out = cm.export(tmp_path / "out")
    (out / "notes.txt").write_text("the user's notes")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].append("stale.bin")  # a file the previous export wrote and this one does not
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "stale.bin").write_bytes(b"old")
    (out / "report.txt").write_text("old report")
    cm.export(out)
    assert {p.name for p in out.iterdir()} == EXPORTED | {"notes.txt"}
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert (out / "report.txt").read_text() != "old report"


def test_export_over_a_previous_export_refuses_to_replace_a_file_it_did_not_write(cm, tmp_path):
    out = cm.export(tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].remove("report.txt")
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "report.txt").write_text("the user's report")
    with pytest.raises(ExportError, match="report.txt"):
        cm.export(out)
    assert (out / "report.txt").read_text() == "the user's report"


def test_overwrite_replaces_a_foreign_directory_whole_and_keeps_its_mode(cm, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o750)
    (out / "keep.txt").write_text("mine")
    cm.export(out, overwrite=True)
    assert {p.name for p in out.iterdir()} == EXPORTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out.stat().st_mode & 0o777) == 0o750
    with pytest.raises(ExportError, match="empty path"):
        cm.export("")


def test_export_under_a_regular_file_says_so(cm, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match=r"file is a file, not a directory"):
        cm.export(tmp_path / "file" / "out")
    with pytest.raises(ExportError, match="it is a file, not a directory"):
        cm.export(tmp_path / "file")


@pytest.mark.parametrize("previous", [False, True])
def test_a_failed_export_leaves_the_old_one_and_nothing_else(cm, tmp_path, monkeypatch, previous):
    out = tmp_path / "deep" / "out"
    if previous:
        cm.export(out)
    before = tree(tmp_path)

    def broken(path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cm.runtime, "export_library", broken)
    with pytest.raises(ExportError, match="No space left on device"):
        cm.export(out)
    assert tree(tmp_path) == before


def test_load_runs_the_export_bit_for_bit(cm, tmp_path):
    out = cm.export(tmp_path / "out")
    loaded = qcompiler.load(out)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), cm(x))
    assert loaded.encodings["inputs"][0]["dtype"] == "uint8"
    with pytest.raises(qcompiler.InputError, match=r"expected float32 \[1, 3, 8, 8\], got float32 \[1, 3, 9, 8\]"):
        loaded(torch.randn(1, 3, 9, 8))
    with pytest.raises(ExportError, match="no qcompiler export"):
        qcompiler.load(tmp_path)


def test_compile_and_export_print_nothing_to_stderr(tmp_path, capfd):
    x = torch.randn(1, 3, 8, 8)
    cm = qcompiler.qcompile(small_model(), x, target="host", bits=8)
    cm.export(tmp_path / "out")
    qcompiler.load(tmp_path / "out")(x)
    out, err = capfd.readouterr()
    assert err == "", err[:2000]


MODEL_FILE = """
import torch, torch.nn as nn
def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8)

class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
    def forward(self, a, b):
        return self.conv(a) + self.conv(b)

def two():
    return Two().eval()
"""


def test_cli_export_refuses_a_foreign_directory_unless_forced(tmp_path):
    (tmp_path / "cli_model.py").write_text(MODEL_FILE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "qcompiler.cli", "cli_model:make", "--export", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert "keep.txt" in done.stderr and "--force" in done.stderr
    assert done.stdout == "", "the destination is refused before compiling (no report printed)"
    assert (out / "keep.txt").read_text() == "mine"
    assert "Scope Saving" not in done.stderr and "Warning" not in done.stderr
    done = subprocess.run(command + ["--force"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == EXPORTED
    assert "Scope Saving" not in done.stderr and "FutureWarning" not in done.stderr


def test_cli_takes_one_input_shape_per_input(tmp_path):
    (tmp_path / "cli_model.py").write_text(MODEL_FILE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "qcompiler.cli", "cli_model:two", "--input-shape", "1,3,8,8", "--input-shape", "1,3,8,8",
               "--export", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [i["shape"] for i in manifest["inputs"]] == [[1, 3, 8, 8], [1, 3, 8, 8]]
