"""Which kernel each layer got, kept through export and load: the manifest's ``kernels``
field, written from a compiled model and read back into a loaded export's report.

    cm.export("out/")                   # manifest.json: "kernels": [one entry per layer]
    m = qcompiler.load("out/")
    print(m.report())                   # the kernel column and fallback lines of cm.report()

Each entry of ``kernels`` (manifest format version 2 on; qcompiler.export) is one layer of
the integer program, in program order, as ``cm.report()`` lists it::

    {"layer": "conv2d_1", "op": "conv2d", "kernel": "generic",
     "reason": "... only uint8/int8 are supported ..."}

``kernel``: the kernel's name (e.g. "x86 vpmaddwd depthwise"), "generic" for the generic
lowering (TVM's default kernels), or null where the target records no choices;
``reason``: why a layer got the generic lowering (the ExactnessError's text, or what the
target lacks), null otherwise. A manifest without the field (version 1, or written before
the format was named) loads and runs; its report says it records no kernel choices.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch.fx as fx

from .compile_report import attach_kernels, fallback_lines, layer_nodes
from .export import MANIFEST, ExportError

KERNELS = "kernels"  # the manifest's field
REPORT_FILE = "report.txt"  # the compiled model's report, in the export


@dataclass
class KernelRow:
    """One layer's kernel: ``kernel`` as the report's column shows it ("" where the target
    does not say), ``fallback`` why it got the generic lowering (None for our kernels)."""

    node: str
    op: str
    kernel: str = ""
    fallback: Optional[str] = None


def kernel_rows(program: fx.GraphModule, choices: Optional[dict]) -> list[KernelRow]:
    """Every layer of ``program`` with the kernel ``choices`` (``runtime.kernel_choices``)
    give it, exactly as ``cm.report()`` attaches them (compile_report.attach_kernels)."""
    rows = [KernelRow(node.name, op) for node, op in layer_nodes(program)]
    attach_kernels(rows, choices)
    return rows


def kernel_entries(program: fx.GraphModule, choices: Optional[dict]) -> list[dict[str, Any]]:
    """The manifest's ``kernels`` field for ``program`` built with ``choices``."""
    return [{"layer": r.node, "op": r.op, "kernel": r.kernel or None, "reason": r.fallback}
            for r in kernel_rows(program, choices)]


def _row(entry: Any) -> Optional[KernelRow]:
    """The row of one manifest entry; None if the entry is malformed."""
    if not isinstance(entry, dict) or not isinstance(entry.get("layer"), str) or not isinstance(entry.get("op"), str):
        return None
    kernel, reason = entry.get("kernel"), entry.get("reason")
    if not isinstance(kernel, (str, type(None))) or not isinstance(reason, (str, type(None))):
        return None
    return KernelRow(entry["layer"], entry["op"], kernel or "", reason)


def manifest_kernel_rows(directory: Path, manifest: dict) -> Optional[list[KernelRow]]:
    """The rows recorded in the manifest of the export in ``directory``; None if it records
    none (an older manifest). ExportError, naming the file, if the field is malformed."""
    entries = manifest.get(KERNELS)
    if entries is None:
        return None
    rows = [_row(e) for e in entries] if isinstance(entries, list) else [None]
    if None in rows:
        bad = entries[rows.index(None)] if isinstance(entries, list) else entries
        raise ExportError(f"{directory / MANIFEST}: its '{KERNELS}' field is not a list of {{layer, op, kernel, "
                          f"reason}} entries (found {bad!r}); export the model again to rewrite it")
    return rows


@dataclass
class LoadedReport:
    """A loaded export's report (``qcompiler.load(dir).report()``): which kernel each layer
    got, and why a layer got the generic lowering, as the compiled model's report showed
    them. The rest of that report (passes, time, error vs float, bytes) was measured on the
    compiled model: it is the export's report.txt."""

    target: str
    directory: Path
    layers: list[KernelRow]
    notes: list[str] = field(default_factory=list)

    def tables(self) -> list:
        from rich.table import Table

        t = Table(title=f"layers of the integer program ({self.target})")
        for col in ("layer", "op", "kernel"):
            t.add_column(col, justify="left")
        for r in self.layers:
            t.add_row(r.node, r.op, r.kernel or "-")
        return [t]

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=170, record=True, file=io.StringIO())
        for table in self.tables():
            console.print(table)
        lines = [f"target {self.target}; loaded from {self.directory}", *fallback_lines(self.layers), *self.notes]
        return console.export_text() + "\n".join(lines) + "\n"


def loaded_report(directory: Path, manifest: dict) -> LoadedReport:
    """The report of the export in ``directory`` (its manifest ``manifest``)."""
    rows = manifest_kernel_rows(directory, manifest)
    notes = []
    if rows is None:
        notes.append(f"{directory / MANIFEST} records no kernel choices (manifest format version "
                     f"{manifest.get('version', 'unnamed')}; they are recorded from version 2 on): export the model "
                     f"again to see which kernel each layer got")
    if (directory / REPORT_FILE).is_file():
        notes.append(f"passes, time, error vs float and bytes, measured on the compiled model: {directory / REPORT_FILE}")
    return LoadedReport(str(manifest.get("target", "?")), directory, rows or [], notes)
