"""PTQ recipes: what ``quantize`` runs when the user names no method or PTQ passes.

The default, "standard", is the white paper's standard PTQ pipeline (Nagel et al., "A White
Paper on Neural Network Quantization", 2021, §4.1 and Fig. 9): cross-layer equalization
where the weights are quantized per tensor (with per-channel weights it has nothing to fix
and measurably hurts: docs/results.md), MSE-based ranges for weights and activations, and
bias correction. "auto" puts AdaRound in place of bias correction (the white paper's choice
when calibration data is available; minutes per model). "minmax" is the plain baseline:
min/max ranges and no PTQ pass.

Without calibration data (only the example inputs) quantize uses "minmax": one example is
too little for MSE ranges or bias correction to estimate anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .errors import QCompilerError, did_you_mean
from .scheme import QuantScheme


@dataclass(frozen=True)
class Recipe:
    """A named choice of calibration method and passes.

    method: the range setting (observers.METHODS); equalize: add "equalize" (CLE) to the
    float passes when the scheme quantizes weights per tensor; ptq: the PTQ passes after
    calibration; doc: one line for the pass report."""

    name: str
    method: str
    ptq: tuple[str, ...]
    equalize: bool
    doc: str


RECIPES = {r.name: r for r in (
    Recipe("standard", "mse", ("bias_correction",), True,
           "the white paper's standard PTQ: CLE (per-tensor weights only), MSE ranges, bias correction"),
    Recipe("auto", "mse", ("adaround",), True,
           "standard PTQ with AdaRound in place of bias correction (slow: minutes)"),
    Recipe("minmax", "minmax", (), False, "min/max ranges, no PTQ pass"),
)}

DEFAULT_RECIPE = "standard"


@dataclass(frozen=True)
class Plan:
    """What quantize runs: the float passes, the calibration method, the PTQ passes and the
    report line that says why."""

    passes: tuple
    method: str
    ptq: tuple
    summary: str


def plan(recipe: Optional[str], method: Optional[str], passes: Optional[Sequence], ptq: Optional[Sequence],
         scheme: QuantScheme, has_calibration: bool, float_passes: Sequence) -> Plan:
    """Resolve ``quantize``'s arguments: explicit ``method``/``passes``/``ptq`` win; the rest
    come from ``recipe`` (default "standard" with calibration data, "minmax" without).
    Raises QCompilerError for an unknown recipe name."""
    if recipe is None:
        recipe = DEFAULT_RECIPE if has_calibration else "minmax"
    if recipe not in RECIPES:
        raise QCompilerError(f"unknown recipe {recipe!r}{did_you_mean(recipe, list(RECIPES))}; "
                             f"use one of {', '.join(RECIPES)}")
    r = RECIPES[recipe]
    explicit = [name for name, value in (("method", method), ("passes", passes), ("ptq", ptq)) if value is not None]
    per_tensor = scheme.weights.granularity == "tensor"
    if passes is None:
        passes = tuple(float_passes) + (("equalize",) if r.equalize and per_tensor else ())
    chosen_method = method or r.method
    chosen_ptq = tuple(r.ptq if ptq is None else ptq)
    summary = f"recipe {r.name}: {r.doc}"
    if not has_calibration and recipe == "minmax":
        summary += " (no calibration data: pass calibration= for the standard recipe)"
    if r.equalize and not per_tensor and "equalize" not in [str(p) for p in passes]:
        summary += "; CLE skipped: weights are per channel"
    if explicit:
        summary += f"; set by the caller: {', '.join(explicit)}"
    return Plan(tuple(passes), chosen_method, chosen_ptq, summary)
