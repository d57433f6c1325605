"""Storing one vector of output lanes along a row that may end inside it, written once for
every ISA: the store of the dense kernel (channels along an output row), of the arm
depthwise and GEMM-conv kernels and of the x86 depthwise "rows" layout (pixels along an
output row or plane).

Note: TVMScript parses a macro from its source file when a kernel using it is built;
editing this file while a build is running makes that build fail."""
from __future__ import annotations

from typing import Callable

from tvm.script import tirx as T


def vector_store_macro(limit: int, dtype: str, guarded: bool = True) -> Callable:
    """A TVMScript macro ``store(out, at, first, lanes, value)``: the ``dtype`` x ``lanes``
    vector ``value`` goes to ``out[at + (first … first + lanes − 1,)]`` (``at``: the tuple
    of the leading indices; ``lanes`` a Python int), the lanes at or past ``limit`` (the
    length of the last axis) dropped: one vector store when every lane lies inside, else
    the vector goes through a ``lanes``-element scratch and the lanes inside are stored
    one by one. ``guarded``: check first < limit before that (False where every vector
    starts inside)."""

    @T.macro
    def tail(out, at, first, lanes, value):
        scratch = T.alloc_buffer((lanes,), dtype, scope="global")
        scratch[T.ramp(0, 1, lanes)] = value
        for lane in range(lanes):
            if first + lane < limit:
                out[at + (first + lane,)] = scratch[lane]

    @T.macro
    def store(out, at, first, lanes, value):
        if first + lanes <= limit:
            out[at + (T.ramp(first, 1, lanes),)] = value
        else:
            if guarded:
                if first < limit:
                    tail(out, at, first, lanes, value)
            else:
                tail(out, at, first, lanes, value)
    return store
