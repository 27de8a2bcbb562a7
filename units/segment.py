"""Syllable-like segmentation of feature sequences, mean pooling, and a target-rate control.

Two segmenters, both returning boundaries ``[N + 1]`` (frame indices, ``0 = b_0 < ... < b_N = T``):

- ``"mincut"`` (SD-HuBERT, Cho et al. 2024): the frame self-similarity matrix ``S`` (cosine,
  shifted to be >= 0) is cut into ``N`` contiguous segments minimizing the sum of normalized
  cuts ``cut(seg) / assoc(seg)``; exact dynamic programming over 2-D prefix sums.
- ``"greedy"`` (Sylber, Cho et al. 2025, simplified): start from single frames and repeatedly
  merge the adjacent pair of segments whose mean features have the highest cosine similarity.

``N`` comes from the target rate: ``N = clamp(round(T / frame_rate * target_rate), 1, T)``, so
the segment rate equals ``target_rate`` (4-6 Hz for syllables) up to rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .features.base import FeatureError

# name -> fn(feats [T, D], n) -> boundaries [n + 1]; filled below, extended with `register_segmenter`
SEGMENTERS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {}


def register_segmenter(name: str, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Add a segmenter ``fn(feats [T, D], n_segments) -> boundaries int64 [n + 1]`` under ``name``."""
    SEGMENTERS[name] = fn


@dataclass(frozen=True)
class SegmenterConfig:
    """``method``: "mincut" or "greedy"; ``target_rate``: segments per second (Hz)."""

    method: str = "mincut"
    target_rate: float = 5.0

    def __post_init__(self):
        if self.method not in SEGMENTERS:
            raise FeatureError(f"segmenter method must be one of {sorted(SEGMENTERS)}, got {self.method!r}")
        if not self.target_rate > 0:
            raise FeatureError(f"target_rate must be > 0 Hz, got {self.target_rate}")


def num_segments(num_frames: int, frame_rate: float, target_rate: float) -> int:
    """Segments for ``num_frames`` at ``frame_rate`` Hz to give ``target_rate`` Hz (>= 1, <= T)."""
    if num_frames <= 0:
        return 0
    return int(min(num_frames, max(1, round(num_frames / frame_rate * target_rate))))


def _unit_rows(feats: torch.Tensor) -> torch.Tensor:
    f = feats.double()
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-8)


def mincut_segment(feats: torch.Tensor, n: int, max_len: int | None = None) -> torch.Tensor:
    """Normalized-cut DP: ``feats [T, D]`` -> boundaries int64 ``[n + 1]``.

    Segments are at most ``max_len`` frames (default ``3 * ceil(T / n)``), which keeps the DP
    at ``O(n * max_len * T)``.
    """
    T = feats.shape[0]
    if not 1 <= n <= T:
        raise FeatureError(f"cannot cut {T} frames into {n} segments")
    L = min(T, max_len or 3 * -(-T // n))
    if L * n < T:
        raise FeatureError(f"{n} segments of at most {L} frames cannot cover {T} frames")
    f = _unit_rows(feats)
    S = f @ f.T
    S = S - S.min()
    P = torch.zeros(T + 1, T + 1, dtype=torch.float64)
    P[1:, 1:] = S.cumsum(0).cumsum(1)
    R = torch.cat([torch.zeros(1, dtype=torch.float64), S.sum(1).cumsum(0)])
    j = torch.arange(T + 1)[None, :]  # segment [i, j) with i = j - l, l = 1..L
    i = j - torch.arange(1, L + 1)[:, None]
    ok = i >= 0
    ic = i.clamp_min(0)
    jj = j.expand_as(ic)
    inside = P[jj, jj] - P[ic, jj] - P[jj, ic] + P[ic, ic]
    assoc = R[jj] - R[ic]
    inf = float("inf")
    cost = torch.where(ok, (assoc - inside) / assoc.clamp_min(1e-12), torch.full_like(assoc, inf))  # [L, T+1]
    C = torch.full((T + 1,), inf, dtype=torch.float64)
    C[0] = 0.0
    back = torch.zeros(n + 1, T + 1, dtype=torch.long)
    for k in range(1, n + 1):
        total = C[ic] + cost  # [L, T+1]
        best, arg = total.min(dim=0)
        back[k] = j[0] - 1 - arg
        C = best
    bounds = [T]
    for k in range(n, 0, -1):
        bounds.append(int(back[k, bounds[-1]]))
    if bounds[-1] != 0:
        raise FeatureError("mincut DP found no segmentation (internal error)")
    return torch.tensor(bounds[::-1], dtype=torch.long)


def greedy_segment(feats: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy adjacent cosine merging: ``feats [T, D]`` -> boundaries int64 ``[n + 1]``."""
    T = feats.shape[0]
    if not 1 <= n <= T:
        raise FeatureError(f"cannot merge {T} frames into {n} segments")
    sums = feats.double().cpu().numpy().copy()
    count = np.ones(T)
    nxt, prv = np.arange(1, T + 1), np.arange(-1, T - 1)
    alive = np.ones(T, dtype=bool)

    def sim(a: int, b: int) -> float:
        x, y = sums[a], sums[b]
        return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-12))

    score = np.full(T, -np.inf)  # score[a]: similarity of segment a with its right neighbour
    for a in range(T - 1):
        score[a] = sim(a, a + 1)
    for _ in range(T - n):
        a = int(np.argmax(score))
        b = int(nxt[a])
        sums[a] += sums[b]
        count[a] += count[b]
        alive[b] = False
        score[b] = -np.inf
        nxt[a] = nxt[b]
        if nxt[a] < T:
            prv[nxt[a]] = a
        score[a] = sim(a, int(nxt[a])) if nxt[a] < T else -np.inf
        if prv[a] >= 0:
            score[prv[a]] = sim(int(prv[a]), a)
    starts = np.nonzero(alive)[0]
    return torch.tensor(np.append(starts, T), dtype=torch.long)


def segment(feats: torch.Tensor, frame_rate: float, config: SegmenterConfig) -> torch.Tensor:
    """Boundaries ``[N + 1]`` of one item ``feats [T, D]`` at ``frame_rate`` Hz (empty -> ``[0]``)."""
    if feats.dim() != 2:
        raise FeatureError(f"segment takes one item [T, D], got {tuple(feats.shape)}")
    n = num_segments(feats.shape[0], frame_rate, config.target_rate)
    if n == 0:
        return torch.zeros(1, dtype=torch.long)
    b = SEGMENTERS[config.method](feats, n)
    if b.dim() != 1 or len(b) != n + 1 or int(b[0]) != 0 or int(b[-1]) != feats.shape[0] or bool((b[1:] <= b[:-1]).any()):
        raise FeatureError(f"segmenter {config.method!r} returned invalid boundaries {b.tolist()[:8]}... "
                           f"(need {n + 1} increasing values from 0 to {feats.shape[0]})")
    return b


SEGMENTERS.update(mincut=mincut_segment, greedy=greedy_segment)


def pool_segments(feats: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Mean of ``feats [T, D]`` over each segment -> ``[N, D]``."""
    lens = (bounds[1:] - bounds[:-1]).to(feats.device)
    if len(lens) == 0:
        return feats.new_zeros(0, feats.shape[1])
    seg = torch.repeat_interleave(torch.arange(len(lens), device=feats.device), lens)
    out = feats.new_zeros(len(lens), feats.shape[1]).index_add_(0, seg, feats[: int(bounds[-1])])
    return out / lens[:, None].to(feats.dtype)
