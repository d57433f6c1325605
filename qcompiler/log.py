"""What qcompiler tells the user, and what it keeps from the libraries it drives.

Everything qcompiler wants a user to see (a model in training mode, calibration taken from
one tensor, ...) goes to the ``"qcompiler"`` logger. If the application has configured
logging (a handler on the root logger, as pytest and most applications do), the records
simply propagate there. Otherwise qcompiler prints them itself, to stderr: through
``rich`` when stderr is a terminal, as ``qcompiler: WARNING: ...`` lines when it is not.
``logging.getLogger("qcompiler").setLevel(logging.ERROR)`` silences it.

TVM's C++ runtime and torch write their own chatter: TVM logs warnings such as
``executable.cc: Warning: Scope Saving`` straight to the process's stderr (file
descriptor 2), which Python cannot filter. ``native_output_captured()`` redirects that file
descriptor for the duration of a call and hands what was written to the ``"qcompiler"``
logger at DEBUG level (at WARNING, if the call fails, so nothing that explains a failure is
lost).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

logger = logging.getLogger("qcompiler")

# Lines the libraries print on a normal compile that say nothing to a qcompiler user.
NOISE = ("Warning: Scope Saving",)


class _DefaultHandler(logging.Handler):
    """Prints qcompiler's records when the application configured no logging of its own."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._rich = None

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:  # the application logs: the record propagates there
            return
        try:
            message = record.getMessage()
            stream = sys.stderr
            if stream is not None and stream.isatty():
                from rich.markup import escape

                if self._rich is None:
                    from rich.console import Console

                    self._rich = Console(stderr=True)
                style = {"WARNING": "yellow", "ERROR": "red"}.get(record.levelname, "")
                prefix = f"[{style}]{record.levelname.lower()}[/{style}]: " if style else ""
                self._rich.print(f"{prefix}{escape(message)}", markup=True, highlight=False, soft_wrap=True)
            elif stream is not None:
                stream.write(f"qcompiler: {record.levelname}: {message}\n")
        except Exception:  # a handler must never raise into the caller
            self.handleError(record)


if not any(isinstance(h, _DefaultHandler) for h in logger.handlers):
    logger.addHandler(_DefaultHandler())


def _stderr_fd() -> int | None:
    try:
        return sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def native_output_captured(what: str = "TVM") -> Iterator[None]:
    """Redirect file descriptor 2 (where C++ libraries log) to a temporary file while the
    block runs, and Python warnings to the log. The lines captured go to the "qcompiler"
    logger: at DEBUG after a normal run (known noise is dropped), at WARNING when the block
    raises. ``what`` names the library in those records."""
    fd = _stderr_fd()
    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryFile(mode="w+b") as sink:
        warnings.simplefilter("always")
        saved = None
        if fd is not None:
            try:
                sys.stderr.flush()
                saved = os.dup(fd)
                os.dup2(sink.fileno(), fd)
            except OSError:
                saved = None
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            if saved is not None:
                os.dup2(saved, fd)
                os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines = [line for line in text.splitlines() if line.strip()]
            if not failed:
                lines = [line for line in lines if not any(n in line for n in NOISE)]
            level = logging.WARNING if failed else logging.DEBUG
            for line in lines:
                logger.log(level, "%s: %s", what, line)
            for w in caught:
                logger.log(level, "%s: %s: %s", what, w.category.__name__, w.message)
