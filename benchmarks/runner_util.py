"""Small helpers of the benchmark runner: bitrate levels, device sync, memory, resampling."""
from __future__ import annotations

import math
import resource
from typing import Optional, Sequence

import torch


def codebook_levels(num_codebooks: int, wanted: Optional[Sequence[int]] = None) -> list[int]:
    """Numbers of codebooks to evaluate: ``wanted`` (clipped to K) or 1, 2, 4, ... plus K."""
    if wanted:
        return sorted({k for k in wanted if 1 <= k <= num_codebooks})
    ks = {num_codebooks}
    k = 1
    while k < num_codebooks:
        ks.add(k)
        k *= 2
    return sorted(ks)


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb(device: str) -> float:
    """CUDA peak allocated (MiB) on a GPU; the process's peak RSS on CPU."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: process-wide peak


def resample(x: torch.Tensor, sr: int, target: int) -> torch.Tensor:
    """``x [..., S]`` from ``sr`` to ``target`` Hz."""
    if sr == target:
        return x
    import torchaudio.functional as AF

    return AF.resample(x, sr, target)


def nan_if_fail(fn, *args) -> float:
    """``fn(*args)``, NaN where it raises or is not finite."""
    try:
        v = fn(*args)
        return v if math.isfinite(v) else float("nan")
    except Exception:  # e.g. PESQ raises on utterances without detectable speech
        return float("nan")
