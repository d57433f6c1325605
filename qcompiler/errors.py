"""Errors qcompiler raises. Each names the model, node, op, pass or file at fault and what
to do about it; the underlying torch/TVM error, if any, is chained beneath (``raise ... from``)."""
from __future__ import annotations

from typing import Optional


class QCompilerError(Exception):
    """Base class of every error qcompiler raises on purpose."""


class CaptureError(QCompilerError):
    """The model could not be captured with torch.export."""


class PassOrderError(QCompilerError):
    """The pass constraints cannot be satisfied (a cycle, or an unknown pass)."""


class PassError(QCompilerError):
    """A pass failed, or broke its contract (requires/ensures, lint, declared tolerance)."""


class GraphError(QCompilerError):
    """A graph is malformed or does not have the form a pass needs."""


def did_you_mean(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest of ``choices``, or '' if none is close."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class UnsupportedOpError(QCompilerError):
    """Nodes whose op has no integer form and that nothing lets run in float.

    ``overrides``: {node name: "float"}, the overrides that keep every one of them in float
    (pass them to ``quantize``); ``nodes``: their names, in graph order."""

    def __init__(self, message: str, overrides: Optional[dict] = None):
        super().__init__(message)
        self.overrides = dict(overrides or {})
        self.nodes = list(self.overrides)


class ConversionError(QCompilerError):
    """The simulation has a pattern with no integer form."""
