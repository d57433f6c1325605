"""Progress on the steps that take more than a second.

Every long step of qcompiler reports progress: calibration, bias correction and AdaRound
(per layer), ``analyze`` (per batch), and compilation (lowering, building) for every target.
Each public entry point takes ``progress``:

    None   (default) shown when stderr is a terminal or the code runs in a Jupyter kernel
    True   always shown
    False  never shown

Loops over items use ``tqdm.auto`` (a widget in notebooks, a bar in terminals); a step that
is one long call into TVM (building) uses a ``rich`` spinner with the elapsed time, which
keeps moving while the call runs, or, with ``progress=True`` where no live display is
possible (stderr is a file or a pipe), one line per stage.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from typing import Any, Iterable, Iterator, Optional


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def enabled(progress: Optional[bool]) -> bool:
    """Whether to show progress for ``progress`` (None: on a terminal or in a notebook)."""
    return bool(progress) if progress is not None else _live_possible()


def bar(iterable: Optional[Iterable] = None, *, desc: str, unit: str = "it", total: Optional[int] = None,
        progress: Optional[bool] = None) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one with ``total``), shown per ``enabled``."""
    from tqdm.auto import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=not enabled(progress), leave=False)


def _live_possible() -> bool:
    """A live spinner can be drawn: stderr is a terminal, or this is a notebook."""
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty()) or _in_notebook()
    except (AttributeError, ValueError):
        return _in_notebook()


def _own_stderr() -> Any:
    """A stream on a duplicate of stderr's file descriptor: the spinner stays visible while
    qcompiler.log.native_output_captured redirects descriptor 2 to keep TVM's chatter."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):  # no real descriptor (e.g. a notebook)
        return None


class _Task:
    def __init__(self, display: Any, task_id: Any, title: str, lines: Any = None):
        self.display, self.task_id, self.title, self.lines = display, task_id, title, lines

    def stage(self, name: str) -> None:
        if self.display is not None:
            self.display.update(self.task_id, description=f"{self.title}: {name}")
        elif self.lines is not None:  # shown, but on no terminal: one line per stage
            self.lines.write(f"{self.title}: {name}\n")
            self.lines.flush()


_ACTIVE: contextvars.ContextVar[Optional[_Task]] = contextvars.ContextVar("qcompiler_progress_task", default=None)


@contextlib.contextmanager
def task(title: str, progress: Optional[bool] = None) -> Iterator[_Task]:
    """A spinner "title: stage" with the elapsed time while the block runs; code inside
    (e.g. a target's builder) names its stage with ``stage("building")``."""
    outer = _ACTIVE.get()
    if outer is not None:  # nested (qcompile → compile): the outer spinner shows the stages
        yield outer
        return
    display = None
    lines = None
    if enabled(progress) and not _live_possible():
        lines = _own_stderr() or sys.stderr
        lines.write(f"{title}\n")
        lines.flush()
    elif enabled(progress):
        from rich.console import Console
        from rich.errors import LiveError
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        stream = _own_stderr()
        console = Console(file=stream) if stream is not None else Console(stderr=True)
        display = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                           console=console, transient=True)
        try:
            display.start()
        except LiveError:  # another live display (the caller's own) is running: stay quiet
            display = None
    current = _Task(display, display.add_task(title, total=None) if display is not None else None, title, lines)
    token = _ACTIVE.set(current)
    try:
        yield current
    finally:
        _ACTIVE.reset(token)
        if display is not None:
            display.stop()
            if display.console.file is not sys.stderr:
                display.console.file.close()
        if lines is not None and lines is not sys.stderr:
            lines.close()


def stage(name: str) -> None:
    """Name the stage of the running ``task`` (nothing if there is none)."""
    current = _ACTIVE.get()
    if current is not None:
        current.stage(name)
