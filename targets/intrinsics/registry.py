"""Named instruction steps, registered once per ISA (as TVM registers a ``TensorIntrin``
by name with a description and an implementation).

An ``Intrinsic`` pairs what one instruction computes (``description``: the lane equation;
``reference``: the same as a numpy function on lane arrays, where given) with how a kernel
emits it (calling it emits ``T.call_llvm_pure_intrin(result, llvm_name, *operands)``).
Kernels take their instructions from here by name, so that an LLVM intrinsic name is
written in exactly one place, next to what it means."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from tvm.script import tirx as T

from qcompiler.errors import did_you_mean


@dataclass(frozen=True)
class Intrinsic:
    """One instruction step: ``name`` (registry key, e.g. "x86_avx2.pmaddwd"), its LLVM
    intrinsic, the result's TIR vector dtype, a one-line lane equation and optionally a
    numpy reference of the same."""

    name: str
    llvm_name: str
    result: str
    description: str
    reference: Optional[Callable] = None

    def __call__(self, *operands):
        """The TIR call of the instruction on ``operands`` (TIR expressions)."""
        return T.call_llvm_pure_intrin(self.result, self.llvm_name, *operands)


INTRINSICS: dict[str, Intrinsic] = {}


def register_intrinsic(name: str, llvm_name: str, result: str, description: str,
                       reference: Optional[Callable] = None) -> Intrinsic:
    """Register (and return) the intrinsic ``name``; ValueError if the name is taken by a
    different definition."""
    intrinsic = Intrinsic(name, llvm_name, result, description, reference)
    known = INTRINSICS.get(name)
    if known is not None and known != intrinsic:
        raise ValueError(f"intrinsic {name!r} is already registered as {known.llvm_name}")
    INTRINSICS[name] = intrinsic
    return intrinsic


def get_intrinsic(name: str) -> Intrinsic:
    """The registered intrinsic ``name``; KeyError naming the close ones otherwise."""
    if name not in INTRINSICS:
        raise KeyError(f"no intrinsic {name!r}{did_you_mean(name, list(INTRINSICS))}")
    return INTRINSICS[name]
