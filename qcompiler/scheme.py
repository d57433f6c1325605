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
    values = sorted(allowed)
    choices = " or ".join(str(v) for v in values) if len(values) < 4 else f"an integer in {values[0]}–{values[-1]}"
    fix = ("bits=8 (the default), or 2–7 for smaller weights" if what == "weight"
           else "activation_bits=8 (the default) or 16")
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise SchemeError(f"{what} bits must be {choices}, got {bits!r} ({type(bits).__name__}). Fix: pass an int: {fix}")
    if bits not in allowed:
        raise SchemeError(f"{what} bits must be {choices}, got {bits}. Fix: {fix}")
    return bits


def check_scheme(scheme: object) -> "Optional[QuantScheme]":
    """``scheme`` itself if it is a QuantScheme or None; a SchemeError with the fix otherwise
    (a target's name given as the scheme, ...)."""
    if scheme is None or isinstance(scheme, QuantScheme):
        return scheme
    hint = ""
    if isinstance(scheme, str):
        hint = (" To use a target's scheme, name the target instead: qcompile(model, x, target='arm_cpu'), or "
                "scheme=qcompiler.targets.get_target('arm_cpu').scheme().")
    raise SchemeError(f"scheme must be a QuantScheme, got {type(scheme).__name__} {scheme!r}. Fix: e.g. "
                      f"scheme=qcompiler.arm_scheme() or QuantScheme(weights=weight_spec(4)).{hint}")


OVERRIDE_KEYS = ("float", "weights", "activations")


def check_overrides(overrides: object) -> dict:
    """``overrides`` (``quantize``'s argument) checked for form: a dict from node or op
    names to "float", or to a dict / NodeOverride whose "weights" and "activations" are
    QuantSpecs ("float" a bool). Returns it ({} for None); SchemeError naming the key and
    the fix otherwise. Whether each key names a node or op is checked against the graph
    (passes/insert_quantizers.py)."""
    if overrides is None:
        return {}
    example = "{'conv1': 'float', 'fc': {'weights': qcompiler.weight_spec(4)}}"
    if not isinstance(overrides, dict):
        raise SchemeError(f"overrides must be a dict from node or op names to 'float' or {{'weights': QuantSpec, "
                          f"'activations': QuantSpec}}, got {type(overrides).__name__}. Fix: e.g. overrides={example}")
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise SchemeError(f"overrides: key {key!r} is a {type(key).__name__}; keys are node or op names (strings, as "
                              f"qm.analyze() prints them). Fix: e.g. overrides={example}")
        if isinstance(value, str):
            if value != "float":
                raise SchemeError(f"override for '{key}' is {value!r}: the only string override is 'float'. Fix: "
                                  f"'float', or {{'weights': qcompiler.weight_spec(4)}} for other bits")
            continue
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(OVERRIDE_KEYS), key=str)
            if unknown:
                from .errors import did_you_mean
                raise SchemeError(f"override for '{key}': unknown key(s) {unknown}"
                                  f"{did_you_mean(str(unknown[0]), list(OVERRIDE_KEYS))}; use 'float', 'weights', 'activations'")
            fields = value
        elif all(hasattr(value, k) for k in OVERRIDE_KEYS):  # a NodeOverride
            fields = {k: getattr(value, k) for k in OVERRIDE_KEYS}
        else:
            raise SchemeError(f"override for '{key}' must be 'float', a dict or a NodeOverride, got {value!r}. Fix: "
                              f"e.g. overrides={example}")
        for k in ("weights", "activations"):
            spec = fields.get(k)
            if spec is not None and not isinstance(spec, QuantSpec):
                maker = "weight_spec" if k == "weights" else "activation_spec"
                raise SchemeError(f"override for '{key}': '{k}' must be a QuantSpec, got {spec!r}. Fix: e.g. "
                                  f"{{'{k}': qcompiler.{maker}({spec if isinstance(spec, int) and not isinstance(spec, bool) else 8})}}")
        if not isinstance(fields.get("float", False), bool):
            raise SchemeError(f"override for '{key}': 'float' must be True or False, got {fields['float']!r}")
    return overrides


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
