"""Observers: see activations during calibration and choose their quantization range.

    minmax      the observed min and max
    mse         the clipping range that minimises the mean squared quantization error
                (grid search over a sample of the observed values; both ends searched)
    percentile  the p-th and (100−p)-th percentiles of a sample of the observed values

The range always includes 0 (so that zero, and zero padding, are exact), and a constant or
all-zero activation gets a valid scale. NaN/Inf in an activation is an error naming the node.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .errors import QCompilerError
from .qparams import QuantParams
from .scheme import QuantSpec

METHODS = ("minmax", "mse", "percentile")
_SAMPLE_PER_BATCH = 1 << 16
_SAMPLE_CAP = 1 << 20
MIN_SCALE = 2.0**-23
"""The smallest scale of any quantizer (activations and weights): float32's machine epsilon,
PyTorch's observers' ``eps``. The simulation computes in float32, so a value that is zero up to
float32 rounding (a layer whose terms cancel) must not get a step finer than that rounding,
or the simulation would sit many steps from the integer program's exact 0 (docs/quantization.md)."""
ZERO_RANGE_SCALE = 2.0**-8  # any scale represents an all-zero tensor; a fine one keeps int32 biases (s_x·s_w) fine


class CalibrationError(QCompilerError):
    """Calibration data that cannot calibrate: empty, non-finite, or of the wrong form."""


def qparams_from_range(lo: float, hi: float, spec: QuantSpec) -> tuple[float, int]:
    """(scale, zero point) for the range [lo, hi] (widened to include 0). Symmetric specs
    use max(|lo|, |hi|) and z = 0. A zero-width range (every value 0) gets scale 2^-8; no
    scale is below MIN_SCALE (2^-23)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)  # zero must be representable
    if spec.symmetric:
        amax = max(-lo, hi)
        scale = amax / ((spec.qmax - spec.qmin) / 2) if amax > 0 else ZERO_RANGE_SCALE
        return float(max(scale, MIN_SCALE)), 0
    if hi - lo <= 0:
        return ZERO_RANGE_SCALE, int(spec.qmin) if lo >= 0 else int(spec.qmax)
    scale = max((hi - lo) / (spec.qmax - spec.qmin), MIN_SCALE)
    zero_point = int(round(spec.qmin - lo / scale))
    return float(scale), max(spec.qmin, min(spec.qmax, zero_point))


def fake_quantize(x: torch.Tensor, scale, zero_point, spec: QuantSpec) -> torch.Tensor:
    """x̂ = s·(clamp(round(x·(1/s)) + z, qmin, qmax) − z), the same arithmetic as
    quantized_decomposed.quantize/dequantize (round half to even)."""
    inv = 1.0 / scale
    return (torch.clamp(torch.round(x * inv) + zero_point, spec.qmin, spec.qmax) - zero_point) * scale


def mse_range(sample: torch.Tensor, lo: float, hi: float, spec: QuantSpec, steps: int = 50,
              weights: Optional[torch.Tensor] = None) -> tuple[float, float]:
    """The clipping range with the least squared quantization error on ``sample`` (each
    element counted ``weights`` times, if given). Candidates shrink the observed [lo, hi] by
    factors on a geometric grid from 1 down to 1/1000: first both ends together, then each
    end alone with the other fixed."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return lo, hi
    x = sample.float()
    grid = torch.logspace(-3, 0, steps, dtype=torch.float64).tolist()

    def error(c_lo: float, c_hi: float) -> float:
        s, z = qparams_from_range(c_lo, c_hi, spec)
        sq = (fake_quantize(x, s, z, spec) - x) ** 2
        return float((sq * weights).sum() if weights is not None else sq.sum())

    if spec.symmetric:
        amax = max(-lo, hi)
        best = min(((error(-a * amax, a * amax), -a * amax, a * amax) for a in grid), key=lambda t: t[0])
        return best[1], best[2]
    best = min(((error(a * lo, a * hi), a * lo, a * hi) for a in grid), key=lambda t: t[0])
    if lo < 0:
        best = min([best] + [(error(a * lo, best[2]), a * lo, best[2]) for a in grid], key=lambda t: t[0])
    if hi > 0:
        best = min([best] + [(error(best[1], a * hi), best[1], a * hi) for a in grid], key=lambda t: t[0])
    return best[1], best[2]


class ActivationObserver(nn.Module):
    """Identity in the graph; records the min, max and a bounded random sample of what
    passes through, then turns them into (scale, zero point) by ``method``. A per-channel
    or per-group spec records the min and max of every index along ``spec.axis`` too (its
    ranges are min/max ranges, per group the union of its channels' ranges)."""

    def __init__(self, spec: QuantSpec, method: str = "minmax", node_name: str = "", percentile: float = 99.99):
        super().__init__()
        if method not in METHODS:
            raise CalibrationError(f"unknown calibration method {method!r}; use one of {METHODS}")
        if spec.granularity != "tensor" and method != "minmax":
            raise CalibrationError(
                f"node '{node_name}': per-{spec.granularity} activations are calibrated with method='minmax' "
                f"('{method}' searches one range per tensor); use calibration_method='minmax' or a per-tensor spec")
        self.channel_min: Optional[torch.Tensor] = None  # per index along spec.axis (per-channel/group specs)
        self.channel_max: Optional[torch.Tensor] = None
        self.spec = spec
        self.method = method
        self.node_name = node_name
        self.percentile = percentile
        self.min: Optional[float] = None
        self.max: Optional[float] = None
        self.batches = 0
        self.samples: list[torch.Tensor] = []  # a random subsample of each batch, plus its min and max
        self.weights: list[torch.Tensor] = []  # how many observed values each sampled value stands for
        self.enabled = True
        self._gen = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled and x.is_floating_point():
            self.observe(x.detach())
        return x

    def observe(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        if not torch.isfinite(x).all():
            bad = "NaN" if torch.isnan(x).any() else "Inf"
            raise CalibrationError(
                f"calibration: {bad} in the output of node '{self.node_name}' (batch {self.batches}); "
                "check the calibration data and the float model on it (a quantization range needs finite values)"
            )
        lo, hi = float(x.min()), float(x.max())
        if self.spec.granularity != "tensor":
            self._observe_channels(x)
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        self.batches += 1
        if self.method != "minmax":
            flat = x.reshape(-1).float()
            weight = torch.ones(flat.numel())
            if flat.numel() > _SAMPLE_PER_BATCH:  # extremes count once; the rest stand for the unsampled values
                rest = flat[torch.randint(flat.numel(), (_SAMPLE_PER_BATCH,), generator=self._gen)]
                flat = torch.cat([flat.min().reshape(1), flat.max().reshape(1), rest])
                weight = torch.cat([torch.ones(2), torch.full((rest.numel(),), (x.numel() - 2) / rest.numel())])
            self.samples.append(flat.clone())
            self.weights.append(weight)
            if sum(s.numel() for s in self.samples) > _SAMPLE_CAP:
                pool, w = torch.cat(self.samples), torch.cat(self.weights)
                keep = torch.randperm(pool.numel(), generator=self._gen)[: _SAMPLE_CAP // 2]
                keep = torch.unique(torch.cat([keep, pool.argmin().reshape(1), pool.argmax().reshape(1)]))
                scale = w.sum() / w[keep].sum()
                self.samples, self.weights = [pool[keep]], [w[keep] * scale]

    def _observe_channels(self, x: torch.Tensor) -> None:
        if not -x.dim() <= self.spec.axis < x.dim():
            raise CalibrationError(f"node '{self.node_name}': its activation spec quantizes along axis {self.spec.axis}, "
                                   f"but the value is {x.dim()}-d (shape {tuple(x.shape)}); choose an axis in "
                                   f"[{-x.dim()}, {x.dim() - 1}]")
        rows = x.float().transpose(0, self.spec.axis % x.dim()).reshape(x.shape[self.spec.axis], -1)
        lo, hi = rows.amin(1), rows.amax(1)
        if self.channel_min is not None and self.channel_min.shape != lo.shape:
            raise CalibrationError(f"node '{self.node_name}': {lo.numel()} channels along axis {self.spec.axis} in batch "
                                   f"{self.batches}, {self.channel_min.numel()} before; per-channel parameters need a "
                                   "fixed size along the quantized axis")
        self.channel_min = lo if self.channel_min is None else torch.minimum(self.channel_min, lo)
        self.channel_max = hi if self.channel_max is None else torch.maximum(self.channel_max, hi)

    @property
    def observed(self) -> bool:
        return self.min is not None

    def range(self) -> tuple[float, float]:
        if not self.observed:
            raise CalibrationError(f"calibration: node '{self.node_name}' saw no data")
        if self.method == "minmax" or not self.samples:
            return self.min, self.max
        sample = torch.cat(self.samples)
        if self.method == "percentile":
            q = torch.tensor([(100 - self.percentile) / 100, self.percentile / 100])
            lo, hi = torch.quantile(sample.double(), q.double()).tolist()
            return min(lo, self.max), max(hi, self.min)
        return mse_range(sample, self.min, self.max, self.spec, weights=torch.cat(self.weights))

    def qparams(self) -> tuple[float, int]:
        """Per-tensor (scale, zero point) from ``range()``."""
        return qparams_from_range(*self.range(), self.spec)

    def quant_params(self, ndim: Optional[int] = None) -> QuantParams:
        """The quantizer's parameters as tensors (``qcompiler.qparams``): per tensor from
        ``qparams()``; per channel/group one (scale, zero point) per index/group along
        ``spec.axis`` (made non-negative for an ``ndim``-d value)."""
        spec = self.spec
        if spec.granularity == "tensor":
            scale, zp = self.qparams()
            return QuantParams(torch.tensor([scale], dtype=torch.float64), torch.tensor([zp]), spec.qmin, spec.qmax, spec.dtype)
        self.range()  # raises if nothing was observed
        lo, hi = self.channel_min, self.channel_max
        group = spec.group_size if spec.granularity == "group" else 1
        if lo.numel() % group:
            raise CalibrationError(f"node '{self.node_name}': {lo.numel()} channels along axis {spec.axis} do not split into "
                                   f"groups of {group}; choose a group_size that divides {lo.numel()}")
        lo, hi = lo.reshape(-1, group).amin(1), hi.reshape(-1, group).amax(1)
        pairs = [qparams_from_range(a, b, spec) for a, b in zip(lo.tolist(), hi.tolist())]
        axis = spec.axis % ndim if ndim is not None else spec.axis
        return QuantParams(torch.tensor([p[0] for p in pairs], dtype=torch.float32), torch.tensor([p[1] for p in pairs]),
                           spec.qmin, spec.qmax, spec.dtype, axis=axis, group_size=group)

    def extra_repr(self) -> str:
        rng = f"[{self.min:.4g}, {self.max:.4g}]" if self.observed else "unobserved"
        return f"{self.spec.describe()}, method={self.method}, seen={rng}"


def weight_qparams(w: torch.Tensor, spec: QuantSpec, method: str = "minmax") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric scales for a weight: per tensor, per channel along ``spec.axis``, or per
    group of ``spec.group_size`` consecutive channels along it, by min/max or by the
    MSE-optimal clipping of each. Returns (scales float32, zero points int64), 1-d: one per
    tensor, channel or group."""
    if spec.granularity == "tensor":
        rows = w.reshape(1, -1)
    else:
        if not -w.dim() <= spec.axis < w.dim():
            raise QCompilerError(f"weight spec axis {spec.axis} is out of range for a {w.dim()}-d weight of shape {tuple(w.shape)}")
        group = spec.group_size if spec.granularity == "group" else 1
        channels = w.shape[spec.axis]
        if channels % group:
            raise QCompilerError(f"a weight with {channels} channels along axis {spec.axis} does not split into groups of "
                                 f"{group}; choose a group_size that divides {channels}")
        rows = w.transpose(0, spec.axis).reshape(channels // group, -1)
    scales, zps = [], []
    for row in rows:
        lo, hi = float(row.min()), float(row.max())
        if method == "mse":
            lo, hi = mse_range(row, lo, hi, spec, steps=50)
        s, z = qparams_from_range(lo, hi, spec)
        scales.append(s)
        zps.append(z)
    return torch.tensor(scales, dtype=torch.float32), torch.tensor(zps, dtype=torch.int64)
