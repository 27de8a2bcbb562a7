"""Nearest-code search and a small batched k-means in torch (CPU or GPU, no extra dependency)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

# Rows of the [N, K] distance matrix computed at once: bounds memory at ~64 MiB of float32.
_MAX_ELEMENTS = 1 << 24


def _check(x: torch.Tensor, codebook: torch.Tensor, who: str) -> None:
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"{who} expects x [N, D] and codebook [K, D], got {tuple(x.shape)} and {tuple(codebook.shape)}")


def _scores(x: torch.Tensor, codebook: torch.Tensor, cosine: bool, half_sq: Optional[torch.Tensor]):
    """Yield ``(rows, scores, half_sq)`` in row blocks (bounded memory): ``scores`` ``[n, K]``, larger
    is nearer: ``x.c`` (cosine) or ``x.c - 0.5 |c|^2`` (Euclidean; ``||x||^2`` is the same for every
    code, so it does not change the order). Every row is computed on its own."""
    x = x.to(codebook.dtype)
    if not cosine and half_sq is None:
        half_sq = 0.5 * codebook.pow(2).sum(dim=1)
    step = max(1, _MAX_ELEMENTS // max(1, codebook.shape[0]))
    for start in range(0, x.shape[0], step):
        rows = x[start:start + step]
        scores = rows @ codebook.t()
        yield rows, (scores if cosine else scores - half_sq), half_sq


def nearest(x: torch.Tensor, codebook: torch.Tensor, cosine: bool = False,
            half_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Index of the nearest code for every row.

    Args:
        x: ``[N, D]`` vectors.
        codebook: ``[K, D]`` codes.
        cosine: rank by dot product (largest first) instead of Euclidean distance; with
            l2-normalised inputs and codes this is the nearest code by cosine.
        half_sq: ``0.5 * |codebook|^2`` ``[K]`` if already known (Euclidean only).

    Returns:
        int64 ``[N]``; ties go to the lowest index. Each row is computed independently of the
        others, so the result does not depend on batch composition.
    """
    _check(x, codebook, "nearest")
    out = [scores.argmax(dim=1) for _, scores, _ in _scores(x, codebook, cosine, half_sq)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def code_margins(x: torch.Tensor, codebook: torch.Tensor, cosine: bool = False,
                 half_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """How close each row's nearest-code choice is to a tie: the gap between the best and the
    second-best score of `nearest`, relative to the size of the terms compared.

    Euclidean: scores ``x.c_j - 0.5 |c_j|^2`` (less than ``0.5 |x|^2`` minus half the squared
    distance), margin ``(s_best - s_2nd) / (0.5 |x|^2 + 0.5 |c_best|^2)``; the denominator bounds
    every term of the score, so float32 rounding moves the margin by about ``1e-7 x D``. Cosine
    (normalised inputs): ``x.c_best - x.c_2nd``. A margin near float rounding (``< 1e-5``) is a
    near-tie: the code can flip when the same input is computed with other matrix shapes.

    Returns float ``[N]`` (``inf`` with a single code).
    """
    _check(x, codebook, "code_margins")
    if codebook.shape[0] < 2:
        return torch.full((x.shape[0],), float("inf"), device=x.device)
    out = []
    for rows, scores, hsq in _scores(x, codebook, cosine, half_sq):
        top = scores.topk(2, dim=1)
        gap = top.values[:, 0] - top.values[:, 1]
        if not cosine:
            scale = 0.5 * rows.pow(2).sum(dim=1) + hsq[top.indices[:, 0]]
            gap = gap / scale.clamp_min(torch.finfo(scale.dtype).tiny)
        out.append(gap)
    return torch.cat(out) if out else torch.zeros(0, device=x.device)


@dataclass(frozen=True)
class KMeansResult:
    """Centroids ``[K, D]`` and the number of vectors ``[K]`` (float) nearest to each."""

    centroids: torch.Tensor
    counts: torch.Tensor


def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 10,
    spherical: bool = False,
    generator: Optional[torch.Generator] = None,
) -> KMeansResult:
    """Lloyd's k-means on ``x`` ``[N, D]`` (``iters=0`` returns the starting centroids).

    Centroids start from ``k`` random rows (sampled with replacement when ``N < k``); a cluster
    that empties keeps its previous centroid. With ``spherical=True`` vectors and centroids are
    l2-normalised and assignment is by cosine (for the factorized codebook).
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty [N, D] tensor, got shape {tuple(x.shape)}")
    x = x.detach().float()
    if spherical:
        x = F.normalize(x, dim=1)
    n = x.shape[0]
    if n >= k:
        idx = torch.randperm(n, generator=generator, device="cpu")[:k]
    else:
        idx = torch.randint(0, n, (k,), generator=generator, device="cpu")
    centroids = x[idx.to(x.device)].clone()
    ones = torch.ones(n, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        assign = nearest(x, centroids, cosine=spherical)
        counts = torch.zeros(k, device=x.device).index_add_(0, assign, ones)
        new = torch.zeros_like(centroids).index_add_(0, assign, x) / counts.clamp(min=1.0)[:, None]
        if spherical:
            new = F.normalize(new, dim=1)
        centroids = torch.where(counts[:, None] > 0, new, centroids)
    counts = torch.zeros(k, device=x.device).index_add_(0, nearest(x, centroids, cosine=spherical), ones)
    return KMeansResult(centroids=centroids, counts=counts)
