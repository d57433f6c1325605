"""Quantization schemes as data: how each tensor is quantized, and what a target allows.

    QuantSpec    one tensor kind: bits, signedness, symmetric or affine, granularity
    QuantScheme  a whole model: weight spec, activation spec, bias bits, fusion, fallback ops

Targets declare their QuantScheme; ``host_scheme()`` is the default. Every spec checks itself
on construction and says what is wrong and what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from .errors import QCompilerError


class SchemeError(QCompilerError):
    """A QuantSpec or QuantScheme that cannot be built or executed."""


GRANULARITIES = ("tensor", "channel", "group")
ROUNDINGS = ("nearest", "adaround")  # nearest = round half to even (torch.round)
WEIGHT_BITS = range(2, 9)
ACTIVATION_BITS = (8, 16)

_DTYPES = {(8, True): torch.int8, (8, False): torch.uint8, (16, True): torch.int16, (16, False): torch.uint16}


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: q = clamp(round(x/s) + z, qmin, qmax), x̂ = s·(q − z).

    bits: 2–8 for weights (stored in int8), 8 or 16 for activations.
    signed: int (True) or uint (False) storage.
    symmetric: z = 0 (signed) and the range is symmetric about 0; else affine (z from the range).
    narrow: drop the most negative code (int8 weights in [−127, 127]) so that −q is exact.
    granularity: "tensor", "channel" (one s per index along ``axis``) or "group" (one s per
        ``group_size`` consecutive indices along ``axis``: per-embedding-group quantization,
        Bondarenko et al. 2021). ``axis`` may be negative (counted from the last). The
        parameters are tensors in the graph (qcompiler.qparams).
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = False
    narrow: bool = False
    granularity: str = "tensor"
    axis: int = 0
    group_size: Optional[int] = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            problems.append(f"bits={self.bits!r}: qcompiler quantizes to 2–8 bits (weights) or 8/16 bits (activations)")
        if self.granularity not in GRANULARITIES:
            problems.append(f"granularity={self.granularity!r}: use one of {GRANULARITIES}")
        if self.granularity == "group" and (self.group_size is None or self.group_size < 1):
            problems.append("granularity='group' needs group_size >= 1")
        if self.symmetric and not self.signed:
            problems.append("symmetric quantization needs signed storage (z = 0); use signed=True or symmetric=False")
        if problems:
            raise SchemeError("invalid QuantSpec: " + "; ".join(problems))

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype: sub-8-bit weights are stored in int8/uint8."""
        return _DTYPES[(8 if self.bits <= 8 else 16, self.signed)]

    def describe(self) -> str:
        kind = "sym" if self.symmetric else "affine"
        gran = self.granularity + (f"({self.group_size})" if self.granularity == "group" else "")
        return f"{'int' if self.signed else 'uint'}{self.bits} {kind} per-{gran} [{self.qmin}, {self.qmax}]"


def weight_spec(bits: int = 8, granularity: str = "channel", group_size: Optional[int] = None) -> QuantSpec:
    """Symmetric, narrow-range signed weights (the white paper's default)."""
    if bits not in WEIGHT_BITS:
        raise SchemeError(f"weight bits must be 2–8, got {bits}: sub-2-bit weights are not supported, and wider weights are not int8-storable")
    return QuantSpec(bits=bits, signed=True, symmetric=True, narrow=True, granularity=granularity, axis=0, group_size=group_size)


def activation_spec(bits: int = 8, signed: bool = False, granularity: str = "tensor", axis: Optional[int] = None,
                    group_size: Optional[int] = None) -> QuantSpec:
    """Affine activations, per tensor by default; per channel or per group along ``axis``
    (e.g. ``activation_spec(granularity="group", axis=-1, group_size=64)`` for a
    transformer's residual stream, PEG). The integer program takes per-tensor activations
    so far: other granularities run in the simulation and are listed in the encodings."""
    if bits not in ACTIVATION_BITS:
        raise SchemeError(f"activation bits must be 8 or 16, got {bits}")
    if granularity != "tensor" and axis is None:
        raise SchemeError(f"per-{granularity} activations need the axis to quantize along: e.g. axis=1 for the "
                          "channels of an NCHW tensor, axis=-1 for a transformer's hidden dimension")
    return QuantSpec(bits=bits, signed=signed if bits == 8 else True, symmetric=False, granularity=granularity,
                     axis=0 if axis is None else axis, group_size=group_size)


@dataclass(frozen=True)
class QuantScheme:
    """A model-wide quantization scheme.

    weights, activations: the default QuantSpec for conv/linear weights and for activations.
    bias_bits: integer bias width; bias scale is s_x·s_w (per output channel).
    fuse_activations: put one quantizer after conv/linear + relu/relu6/clamp (depthwise too).
    fallback_ops: op names (e.g. "aten.softmax.int") a target lets run in float between
        DQ and Q. An op that is neither quantizable nor listed here is an error.
    rounding: how weights are rounded ("nearest"; "adaround" when the AdaRound pass ran).
    """

    weights: QuantSpec = field(default_factory=weight_spec)
    activations: QuantSpec = field(default_factory=activation_spec)
    bias_bits: int = 32
    fuse_activations: bool = True
    fallback_ops: frozenset = frozenset()
    rounding: str = "nearest"

    def __post_init__(self) -> None:
        if self.weights.bits not in WEIGHT_BITS:
            raise SchemeError(f"weight bits must be 2–8, got {self.weights.bits}")
        if self.activations.bits not in ACTIVATION_BITS:
            raise SchemeError(f"activation bits must be 8 or 16, got {self.activations.bits}")
        if self.rounding not in ROUNDINGS:
            raise SchemeError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")

    def with_bits(self, weight_bits: Optional[int] = None, activation_bits: Optional[int] = None) -> "QuantScheme":
        w = self.weights if weight_bits is None else replace(self.weights, bits=_check(weight_bits, WEIGHT_BITS, "weight"))
        a = self.activations
        if activation_bits is not None:
            a = replace(a, bits=_check(activation_bits, ACTIVATION_BITS, "activation"), signed=a.signed or activation_bits == 16)
        return replace(self, weights=w, activations=a)

    def describe(self) -> str:
        return f"weights {self.weights.describe()}; activations {self.activations.describe()}; bias int{self.bias_bits}"


def _check(bits: int, allowed, what: str) -> int:
    if bits not in allowed:
        values = sorted(allowed)
        if len(values) < 4:
            choices = " or ".join(str(v) for v in values)
        else:
            choices = f"an integer in {values[0]}–{values[-1]}"
        raise SchemeError(f"{what} bits must be {choices}, got {bits}")
    return bits


def host_scheme() -> QuantScheme:
    """The host default: int8 symmetric per-channel weights, uint8 affine per-tensor
    activations, int32 bias, activations fused, no float fallback."""
    return QuantScheme()


def arm_scheme() -> QuantScheme:
    """The arm_cpu default: int8 symmetric per-channel weights and **int8** affine
    per-tensor activations (TFLite's choice on ARM), int32 bias, activations fused. The
    sdot kernels multiply int8 by int8, so int8 activations go in as they are; uint8 ones
    (the host scheme) are flipped by −128 where the kernels pack them, which is also exact."""
    return QuantScheme(activations=activation_spec(8, signed=True))
