"""The examples in docs/ run as written."""
import importlib.util
import re
import sys
from pathlib import Path

from hypothesis import settings

import qcompiler
from qcompiler.pass_manager import REGISTRY

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def test_custom_pass_example_is_short_ordered_verified_and_property_tested(tmp_path):
    pass_file, usage = python_blocks("custom-pass.md")
    assert len(pass_file.strip().splitlines()) <= 30, "the doc promises a pass and its test in under 30 lines"
    path = tmp_path / "my_passes.py"
    path.write_text(pass_file)
    saved = dict(REGISTRY)
    try:
        spec = importlib.util.spec_from_file_location("my_passes", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        # the user's property test, as written (fewer examples: the full count runs for the built-ins)
        settings(max_examples=30)(module.test_drop_clones)()
        # the usage block: ordered between fold_bn and equalize, verified, reported
        namespace = {}
        exec(compile(usage.replace("print(result.report)", "").strip(), "custom-pass.md", "exec"), namespace)
        report = namespace["result"].report
        assert "removed 1 clone(s)" in report["drop_clones"].summary
        assert report["drop_clones"].rel_error == 0.0
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)
        sys.modules.pop("my_passes", None)
