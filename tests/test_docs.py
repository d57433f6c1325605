"""The README's and docs/'s code runs as written.

Every ```python block of README.md and docs/*.md runs, in a fresh namespace, in an empty
working directory that is also on sys.path. Two HTML comments on the line before a fence
change that:
    <!-- not run: why -->      the block is a sketch (the reason is required)
    <!-- file: my_passes.py --> the block is a file the reader saves: it is written into the
                                working directory before the page's blocks run (they may
                                import it), and is not run on its own
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!--\s*(?P<kind>not run|file):\s*(?P<arg>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(page: Path) -> list[dict]:
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start("code")) + 1
        found.append({"page": page, "line": line, "code": m.group("code"), "kind": m.group("kind"), "arg": m.group("arg")})
    return found


ALL = [b for page in PAGES for b in blocks(page)]
RUN = [b for b in ALL if b["kind"] is None]


def _id(block: dict) -> str:
    return f"{block['page'].relative_to(ROOT)}:{block['line']}"


def test_every_skipped_block_says_why_and_most_blocks_run():
    for b in ALL:
        if b["kind"] == "not run":
            assert len(b["arg"]) >= 10, f"{_id(b)}: a block that is not run says why"
    assert len(RUN) >= 10, f"only {len(RUN)} doc blocks run"
    pages = {b["page"].name for b in RUN}
    assert {"README.md", "quantization.md", "targets.md", "custom-pass.md"} <= pages


@pytest.mark.parametrize("block", RUN, ids=[_id(b) for b in RUN])
def test_doc_block_runs_as_written(block, tmp_path, monkeypatch):
    from qcompiler.pass_manager import REGISTRY

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for b in blocks(block["page"]):
        if b["kind"] == "file":
            (tmp_path / b["arg"]).write_text(b["code"])
    saved = dict(REGISTRY)
    modules = set(sys.modules)
    try:
        namespace = {"__name__": "__doc_block__"}
        exec(compile(block["code"], _id(block), "exec"), namespace)
    except Exception as exc:
        from qcompiler.targets.arm_cpu import ArmToolsError

        if isinstance(exc, ArmToolsError):
            pytest.skip(f"{_id(block)} needs the arm tools: {exc}")
        raise
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)
        for name in set(sys.modules) - modules:  # the page's own files (my_passes), imported fresh next time
            if name.split(".")[0] not in ("qcompiler", "torch", "tvm", "numpy"):
                mod = sys.modules.get(name)
                if mod is not None and str(getattr(mod, "__file__", "") or "").startswith(str(tmp_path)):
                    del sys.modules[name]


def _pytest_in_empty_folder(tmp_path: Path, files: dict[str, str], examples: str | None) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QCOMPILER_", "PYTEST_", "HYPOTHESIS"))}
    if examples is not None:
        env["QCOMPILER_EXAMPLES"] = examples
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)


def test_custom_pass_recipe_passes_with_pytest_in_an_empty_folder(tmp_path):
    """docs/custom-pass.md's file, run as the page says (`pytest my_passes.py`) in a folder
    with no conftest: it passes, with no deadline error and no torch debug trace."""
    (page_file,) = [b for b in blocks(ROOT / "docs" / "custom-pass.md") if b["kind"] == "file"]
    assert page_file["arg"] == "my_passes.py"
    assert len(page_file["code"].strip().splitlines()) <= 30, "the page promises a pass and its test in under 30 lines"
    done = _pytest_in_empty_folder(tmp_path, {"my_passes.py": page_file["code"]}, examples="8")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "1 passed" in output
    assert "DeadlineExceeded" not in output and "torch.__trace" not in output


def test_qcompiler_given_has_no_deadline_and_the_documented_example_count(tmp_path):
    """``qcompiler.testing.given``, outside this repository: an example slower than
    hypothesis's 200 ms deadline passes, and the default count is 200 (QCOMPILER_EXAMPLES
    changes it)."""
    test = (
        "import time\n"
        "from hypothesis import strategies as st\n"
        "from qcompiler.testing import given\n"
        "def test_count():\n"
        "    calls = []\n"
        "    @given(st.integers(0, 10**9))\n"
        "    def slow(i):\n"
        "        calls.append(i)\n"
        "        if len(calls) == 1:\n"
        "            time.sleep(0.4)\n"
        "    slow()\n"
        "    assert len(calls) == EXPECTED, len(calls)\n"
    )
    for examples, expected in ((None, 200), ("7", 7)):
        folder = tmp_path / f"run{expected}"
        folder.mkdir()
        done = _pytest_in_empty_folder(folder, {"test_kit.py": test.replace("EXPECTED", str(expected))}, examples)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
