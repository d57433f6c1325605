"""Accuracy metrics shared by tests, benchmarks and reports."""
from __future__ import annotations

import math

import torch


def sqnr_db(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σ ref² / Σ (ref − actual)²)."""
    ref = reference.detach().double()
    noise = float(((ref - actual.detach().double()) ** 2).sum())
    signal = float((ref**2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def top1_agreement(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Fraction of rows whose argmax agrees."""
    return float((reference_logits.argmax(-1) == logits.argmax(-1)).double().mean())


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean())
