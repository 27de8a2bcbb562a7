"""Inference fast path for the codec's RVQ: codebook tables computed once, not per call.

`speechtok.codec.quantization`'s codebooks derive their lookup table
(``embed_sum / cluster_usage``) and ``0.5 * |e|^2`` on every ``encode``/``decode`` call: for
Mimi that is 32 tables of 2048 x 256 per call, which dominates a one-frame streaming step.
`CachedRVQ` keeps them, keyed by the buffers' identity and version counters (any in-place update
or reload invalidates them), and runs the very same arithmetic as the quantizer's
``encode``/``decode`` (``argmin(0.5 |e|^2 - z e^T)``, embedding lookup, the same order of
residual updates and sums), so codes and latents are bitwise those of the quantizer.

Only Euclidean codebooks on the quantizer's own projections are handled; anything else (or
training mode) falls back to the quantizer's methods. The cache is built by small calls
(streaming steps); large offline windows without a cache use the quantizer directly, so offline
encoding keeps one copy of the codebooks in memory.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


_MAX_ELEMENTS = 1 << 24  # speechtok.codec.quantization.kmeans.nearest's block size


def _key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t._version, t.device, t.dtype)


class _Tables:
    def __init__(self):
        self.key = None
        self.tables: list[torch.Tensor] = []
        self.half_sq: list[torch.Tensor] = []


def _supported(rvq: nn.Module) -> bool:
    layers = getattr(rvq, "layers", None)
    if layers is None:
        return False
    for layer in layers:
        cb = getattr(layer, "codebook", None)
        if cb is None or getattr(cb, "spherical", True) or not hasattr(cb, "table") \
                or getattr(layer, "in_proj", None) is not None or getattr(layer, "out_proj", None) is not None:
            return False
    return True


class CachedRVQ:
    """Cached-table ``encode``/``decode`` for a ``ResidualVQ`` or ``SplitResidualVQ``."""

    CACHE_ROWS = 8  # calls with at most this many frames (x batch) build the cache

    def __init__(self, quantizer: nn.Module):
        self.q = quantizer
        if hasattr(quantizer, "semantic_rvq"):
            self.parts = [quantizer.semantic_rvq, quantizer.acoustic_rvq]
            self.sizes = [quantizer.n_semantic, quantizer.n_q - quantizer.n_semantic]
        else:
            self.parts, self.sizes = [quantizer], [quantizer.n_q]
        self.enabled = all(_supported(p) for p in self.parts)
        self._cache = [_Tables() for _ in self.parts]

    def _tables(self, i: int) -> _Tables:
        rvq, c = self.parts[i], self._cache[i]
        bufs = [t for layer in rvq.layers for t in (layer.codebook.embed_sum, layer.codebook.cluster_usage)]
        key = tuple(_key(t) for t in bufs)
        if key != c.key:
            with torch.no_grad():
                c.tables = [layer.codebook.table() for layer in rvq.layers]
                c.half_sq = [0.5 * t.pow(2).sum(dim=1) for t in c.tables]
            c.key = key
        return c

    def usable(self, rows: int = 0) -> bool:
        """Use the cached tables: inference only; for large calls (offline windows, where the
        per-call table cost is amortised) only if the cache already exists, so offline encoding
        does not hold a second copy of the codebooks."""
        if not self.enabled or self.q.training:
            return False
        return rows <= self.CACHE_ROWS or self._cache[0].key is not None

    def encode(self, x: torch.Tensor, n_q: Optional[int] = None) -> torch.Tensor:
        """``x`` ``[B, D, T]`` -> codes int64 ``[B, n_q, T]`` (same as ``quantizer.encode``)."""
        if not self.usable(x.shape[0] * x.shape[-1]):
            return self.q.encode(x, None, n_q)
        n = sum(self.sizes) if n_q is None else int(n_q)
        if not 1 <= n <= sum(self.sizes):
            raise ValueError(f"n_q must be in [1, {sum(self.sizes)}], got {n}")
        B, _, T = x.shape
        codes = []
        for i, (rvq, size) in enumerate(zip(self.parts, self.sizes)):
            k = min(size, n)
            n -= k
            if k == 0:
                break
            tab = self._tables(i)
            residual = rvq._in(x)
            D = residual.shape[1]
            for j in range(k):
                z = residual.transpose(1, 2).reshape(-1, D).to(tab.tables[j].dtype)
                step = max(1, _MAX_ELEMENTS // tab.tables[j].shape[0])  # same row blocks as `nearest`
                c = torch.cat([(tab.half_sq[j] - z[a:a + step] @ tab.tables[j].t()).argmin(dim=1)
                               for a in range(0, z.shape[0], step)]) if z.shape[0] else z.new_zeros(0, dtype=torch.long)
                q = F.embedding(c, tab.tables[j]).reshape(B, T, D).transpose(1, 2)
                residual = residual - q
                codes.append(c.reshape(B, 1, T))
        return torch.cat(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, k, T]`` (no -1) -> latent ``[B, D, T]`` (same as ``quantizer.decode``)."""
        if not self.usable(codes.shape[0] * codes.shape[-1]) or bool((codes < 0).any()):
            return self.q.decode(codes)
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= sum(self.sizes):
            raise ValueError(f"codes must be [B, k<={sum(self.sizes)}, T], got shape {tuple(codes.shape)}")
        B, K, T = codes.shape
        out, start = None, 0
        for i, (rvq, size) in enumerate(zip(self.parts, self.sizes)):
            k = min(size, K - start)
            if k <= 0:
                break
            tab = self._tables(i)
            quantized = sum(F.embedding(codes[:, start + j], tab.tables[j]).transpose(1, 2) for j in range(k))
            y = rvq._out(quantized)
            out = y if out is None else out + y
            start += k
        return out
