"""The pass report: one row per pass a PassManager ran (qcompiler.pass_manager)."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class PassRecord:
    """One pass run: its name, time, ops and constant tensors changed, whether it changed
    anything, its summary line and ``counts`` (PassResult.counts), and in verify mode the
    error it introduced."""

    name: str
    seconds: float
    changed_ops: int
    changed_tensors: int
    modified: bool
    summary: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    max_abs_error: Optional[float] = None
    rel_error: Optional[float] = None
    total_rel_error: Optional[float] = None


@dataclass
class PassReport:
    """One row per pass run: time, ops and constant tensors changed, and (verify mode) the error it introduced
    relative to the graph before it, and the accumulated error relative to the input graph."""

    records: list[PassRecord] = field(default_factory=list)
    recipe: str = ""  # what quantize chose to run and why (qcompiler.recipe), '' outside quantize

    def table(self) -> Any:
        """The report as a rich Table (rich is imported here, not when qcompiler is)."""
        from rich.table import Table

        t = Table(title="pass report" + (f" ({self.recipe})" if self.recipe else ""))
        for col, just in (("pass", "left"), ("time (ms)", "right"), ("ops changed", "right"), ("tensors changed", "right"),
                          ("max abs err", "right"), ("rel err", "right"), ("total rel err", "right"), ("what it did", "left")):
            t.add_column(col, justify=just)
        fmt = lambda v: "-" if v is None else f"{v:.2e}"
        for r in self.records:
            t.add_row(r.name, f"{r.seconds * 1e3:.1f}", str(r.changed_ops), str(r.changed_tensors), fmt(r.max_abs_error),
                      fmt(r.rel_error), fmt(r.total_rel_error), r.summary)
        return t

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=160, record=True, file=io.StringIO())
        console.print(self.table())
        return console.export_text()

    def __getitem__(self, name: str) -> PassRecord:
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(name)
