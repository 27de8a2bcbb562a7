"""Codebook health metrics, returned as tensors (no host sync: only the caller calls ``.item()``)."""
from __future__ import annotations

import math

import torch

_LN2 = math.log(2.0)


def usage_entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """Entropy (bits) of the code distribution given by ``counts`` ``[K]`` (0 when all zero)."""
    p = counts.float() / counts.float().sum().clamp(min=1e-12)
    return -(p * p.clamp(min=1e-30).log()).sum() / _LN2


def codebook_metrics(
    counts: torch.Tensor,
    window_counts: torch.Tensor,
    usage: torch.Tensor,
    threshold: float,
    mse: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Scalar health metrics of one codebook.

    Args:
        counts: ``[K]`` codes used by the valid frames of this batch.
        window_counts: ``[K]`` counts over the recent window (the steps since the last
            dead-code check, training) or this batch (eval).
        usage: ``[K]`` usage EMA the dead-code rule reads (``code_usage``).
        threshold: fraction of the uniform share under which a code is dead.
        mse: scalar quantization error (mean squared error per dimension, valid frames).

    Returns:
        ``perplexity`` (``2**entropy``, between 1 and K), ``entropy_bits``, ``used`` (fraction of
        codes used in the window), ``dead`` (number of codes under the dead-code threshold) and
        ``mse``; all 0-dim float tensors on the codebook's device.
    """
    entropy = usage_entropy_bits(counts)
    share = usage.sum() / usage.numel()
    return {
        "perplexity": torch.exp2(entropy),
        "entropy_bits": entropy,
        "used": (window_counts > 0).float().mean(),
        "dead": (usage < threshold * share).float().sum(),
        "mse": mse.detach(),
    }


def masked_mse(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error over dimensions and valid rows.

    Args:
        a, b: ``[N, D]``.
        weight: ``[N]`` float, 1 for valid rows and 0 for padding.

    Returns:
        0-dim tensor; 0 when no row is valid (never NaN).
    """
    per_row = (a - b).pow(2).mean(dim=1)
    per_row = torch.where(weight > 0, per_row, torch.zeros_like(per_row))
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)
