"""Confidence intervals of the benchmark means: percentile bootstrap over utterances.

Every interval is a 95 % percentile bootstrap (`RESAMPLES` resamples of the utterances with
replacement, numpy ``default_rng(SEED)``, so reruns give the same interval). A mean over
utterances resamples the per-utterance values (NaN values, where a metric is undefined, are
dropped first); a corpus-level error rate (WER/CER = total edits / total reference length)
resamples the (edits, length) pairs of the utterances and recomputes the ratio. Fewer than two
values give ``(nan, nan)``: no interval.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

SEED = 20
RESAMPLES = 2000
LEVEL = 0.95


def mean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else float("nan")


def _indices(n: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, n, size=(RESAMPLES, n))


def _interval(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """95 % bootstrap interval of the mean of ``values`` (finite ones)."""
    xs = np.array([float(v) for v in values if v is not None and math.isfinite(v)])
    if len(xs) < 2:
        return float("nan"), float("nan")
    return _interval(xs[_indices(len(xs))].mean(axis=1))


def ratio_ci(edits: Sequence[int], lengths: Sequence[int]) -> tuple[float, float]:
    """95 % bootstrap interval of ``sum(edits) / sum(lengths)`` (a corpus-level error rate)."""
    e, n = np.asarray(edits, dtype=float), np.asarray(lengths, dtype=float)
    if len(e) < 2:
        return float("nan"), float("nan")
    idx = _indices(len(e))
    num, den = e[idx].sum(axis=1), n[idx].sum(axis=1)
    ok = den > 0
    if not ok.any():
        return float("nan"), float("nan")
    return _interval(num[ok] / den[ok])
