"""Codebooks: the lookup table, its training statistics and the collapse countermeasures.

Two lookups share one base class:

* :class:`EuclideanCodebook`: nearest code by Euclidean distance, codes updated by an EMA of
  the vectors assigned to them (no gradient), as Mimi/EnCodec. Buffers keep Mimi's names
  (transformers' ``MimiEuclideanCodebook``): ``embed_sum`` ``[K, Dc]``, ``cluster_usage`` ``[K]``,
  ``initialized`` ``[1]``; the table is ``embed_sum / cluster_usage.clamp(min=1e-5)[:, None]``.
* :class:`FactorizedCodebook`: nearest code by cosine between l2-normalised inputs and codes,
  the table is a parameter ``weight`` ``[K, Dc]`` trained by gradient (codebook loss), as DAC
  (``quantizers.{i}.codebook.weight``). The low-dimensional projection lives in the
  :class:`~speechtok.codec.quantization.vq.VectorQuantizer` that owns the codebook.

Both also hold ``initialized`` ``[1]`` (0 until the first training batch(es) initialise the
codes: k-means or, without it, the random codes with usage on the scale of one batch; loaded
checkpoints carry 1) and the non-persistent ``code_usage`` ``[K]`` that the dead-code rule reads.

Codebooks work on flat vectors: ``z`` ``[N, Dc]`` with a bool ``valid`` ``[N]``; frames with
``valid == False`` (padding) never count in statistics, never update codes and are never picked
to replace a dead code. Nothing here syncs with the host on the training path (no ``.item()``,
no boolean indexing) except initialisation, which runs once.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .kmeans import code_margins, kmeans, nearest
from .metrics import codebook_metrics
from .policy import DeadCodePolicy, KMeansInit


def _distributed():
    """``torch.distributed`` when a process group is initialised, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _sample_valid_rows(z: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``z`` ``[N, D]`` drawn uniformly (with replacement) among valid rows.

    Sync-free: the ``r``-th valid row is found with ``searchsorted`` on the running count of
    valid rows. When no row is valid the result is meaningless; callers gate on that.
    """
    running = valid.long().cumsum(0)
    total = running[-1:].clamp(min=1)
    r = (torch.rand(n, device=z.device) * total).long().clamp(max=total - 1)
    idx = torch.searchsorted(running, r + 1).clamp(max=z.shape[0] - 1)
    return z[idx]


class _Codebook(nn.Module):
    """Shared state and countermeasures; subclasses define the table and its update."""

    spherical = False  # k-means and lookup by cosine

    def __init__(self, codebook_size: int, dim: int, kmeans_init: KMeansInit, dead_code: DeadCodePolicy):
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be >= 1, got {codebook_size}, {dim}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.kmeans_init = kmeans_init
        self.dead_code = dead_code
        # EMA (decay ``dead_code.decay``) of per-step code counts: what the dead-code rule and the
        # ``dead`` metric read. Not saved: it restarts at the uniform share in a new process.
        self.register_buffer("code_usage", torch.ones(codebook_size), persistent=False)
        # 0 until the first training batch(es) set codes (k-means) and usage scale; loaded
        # checkpoints carry 1, so nothing is re-initialised after loading.
        self.register_buffer("initialized", torch.tensor([0.0]))
        # Codes used since the last dead-code check (the window of the ``used`` metric).
        self.register_buffer("window_usage", torch.zeros(codebook_size), persistent=False)
        self._init_done: Optional[bool] = None  # host-side cache of ``initialized``
        self._usage_ready = False  # ``code_usage`` holds statistics of this process
        self._pool: list[torch.Tensor] = []  # valid vectors pooled for k-means
        self._pool_batches = 0
        self._steps = 0

    # ------------------------------------------------------------------ subclass API
    def table(self) -> torch.Tensor:
        """The ``[K, Dc]`` vectors that ``decode`` returns."""
        raise NotImplementedError

    def _write_table(self, vectors: torch.Tensor, usage: torch.Tensor, where: torch.Tensor) -> None:
        """Set codes ``where`` (bool ``[K]``) to ``vectors`` ``[K, Dc]``; ``usage`` ``[K]`` is their
        usage on the scale of one step (an EMA codebook weighs its sums with it)."""
        raise NotImplementedError

    def _accumulate(self, z: torch.Tensor, codes: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> None:
        """Update the table's own statistics with the valid rows and their ``counts`` ``[K]``."""

    def _write_codes(self, vectors: torch.Tensor, usage: torch.Tensor, where: torch.Tensor) -> None:
        self._write_table(vectors, usage, where)
        self.code_usage.copy_(torch.where(where, usage.to(self.code_usage.dtype), self.code_usage))
        self._usage_ready = True

    def _shared_tensors(self) -> list[torch.Tensor]:
        """Tensors that must be identical on every rank (broadcast after host-side changes)."""
        raise NotImplementedError

    def _codes_from_kmeans(self, data: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """The code vectors to store for k-means ``centroids`` of ``data`` ``[N, Dc]``."""
        return centroids

    def _table_sources(self) -> list[torch.Tensor]:
        """The tensors `table` is computed from (their versions key the inference cache)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ lookup
    def _lookup(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(table [K, Dc], search)``: ``search`` is the l2-normalised table (spherical) or
        ``0.5 * |table|^2`` ``[K]`` (Euclidean).

        Without autograd and outside training the pair is cached, keyed by the identity and
        version counters of `_table_sources` (any update or reload invalidates it): for Mimi the
        tables are 32 x 2048 x 256, and recomputing them per call cost a sixth of offline
        encode + decode time and most of a one-frame streaming step. The cache holds one extra
        copy of the codebooks (67 MB for Mimi), built on the first inference call.
        """
        frozen = self.__dict__.get("_frozen_lookup")
        if frozen is not None:
            return frozen
        cacheable = not self.training and not torch.is_grad_enabled()
        if cacheable:
            key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in self._table_sources())
            cache = self.__dict__.get("_lookup_cache")
            if cache is not None and cache[0] == key:
                return cache[1], cache[2]
        table = self.table()
        search = F.normalize(table, dim=1) if self.spherical else 0.5 * table.pow(2).sum(dim=1)
        if cacheable:
            self.__dict__["_lookup_cache"] = (key, table, search)
        return table, search

    def freeze_for_inference(self) -> None:
        """Build the lookup tables once and free the buffers they are computed from (an EMA
        codebook's sums, as big as the table) by moving them to the meta device. For encode-only
        models, which are neither trained nor saved; codes are unchanged."""
        self.eval()
        with torch.no_grad():
            table, search = self._lookup()
        self.__dict__["_frozen_lookup"] = (table, search)
        sources = self._table_sources()
        for name, buf in list(self._buffers.items()):
            if buf is not None and any(buf is src for src in sources) and buf.data_ptr() != table.data_ptr():
                self._buffers[name] = torch.empty(buf.shape, dtype=buf.dtype, device="meta")

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code of every row: ``z`` ``[N, Dc]`` -> int64 ``[N]``."""
        with torch.no_grad():
            table, search = self._lookup()
            if self.spherical:
                return nearest(F.normalize(z, dim=1), search, cosine=True)
            return nearest(z, table, half_sq=search)

    def margins(self, z: torch.Tensor) -> torch.Tensor:
        """`code_margins` of ``encode(z)``: ``z`` ``[N, Dc]`` -> float ``[N]`` (small: a near-tie)."""
        with torch.no_grad():
            table, search = self._lookup()
            if self.spherical:
                return code_margins(F.normalize(z, dim=1), search, cosine=True)
            return code_margins(z, table, half_sq=search)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors: int64 ``[...]`` -> ``[..., Dc]``."""
        return F.embedding(codes, self._lookup()[0])

    # ------------------------------------------------------------------ training
    def is_initialized(self) -> bool:
        if self._init_done is None:
            self._init_done = bool(self.initialized.item())
        return self._init_done

    def maybe_initialize(self, z: torch.Tensor, valid: torch.Tensor) -> None:
        """Initialise on the first training batch(es); a no-op once initialised.

        With k-means: pool the valid rows of the first ``kmeans_init.batches`` batches, then set
        the codes to the k-means centroids. Without: keep the random codes. Either way usage
        starts on the scale of one batch (each code its share of the batch's valid frames), so
        the dead-code rule's EMA needs no warm-up from an arbitrary scale.
        """
        if self.is_initialized() or not bool(valid.any()):  # (one sync, before initialisation only)
            return
        if not self.kmeans_init.enabled:
            share = valid.sum().to(self.code_usage.dtype) / self.codebook_size
            every = torch.ones(self.codebook_size, dtype=torch.bool, device=z.device)
            with torch.no_grad():
                self._write_codes(self.table().detach().clone(), share.expand(self.codebook_size), every)
                self.initialized.fill_(1.0)
            self._finish_init()
            return
        self._pool.append(z.detach()[valid])
        self._pool_batches += 1
        if self._pool_batches < self.kmeans_init.batches:
            return
        data = torch.cat(self._pool)
        per_batch = data.shape[0] / self._pool_batches
        self._pool, self._pool_batches = [], 0
        dist = _distributed()
        if data.shape[0] > 0 and (dist is None or dist.get_rank() == 0):
            if data.shape[0] > self.kmeans_init.max_samples:
                data = data[torch.randperm(data.shape[0], device=data.device)[: self.kmeans_init.max_samples]]
            result = kmeans(data, self.codebook_size, self.kmeans_init.iters, spherical=self.spherical)
            # Usage on the scale of one batch, so EMA updates weigh in at once.
            usage = result.counts * (per_batch / data.shape[0])
            every = torch.ones(self.codebook_size, dtype=torch.bool, device=usage.device)
            with torch.no_grad():
                self._write_codes(self._codes_from_kmeans(data, result.centroids).to(self.table().dtype), usage, every)
                self.initialized.fill_(1.0)
        self._finish_init()

    def restart_initialization(self) -> None:
        """Forget the initialisation: the next training batch(es) initialise the codes again
        (k-means on the inputs of that time, when enabled). For a schedule that trains the
        autoencoder first and starts quantizing once its latents carry information."""
        with torch.no_grad():
            self.initialized.fill_(0.0)
        self._init_done = False
        self._usage_ready = False
        self._pool, self._pool_batches = [], 0
        self.window_usage.zero_()

    def _finish_init(self) -> None:
        dist = _distributed()
        if dist is not None:  # rank 0's codes win (random init may differ between ranks)
            for t in self._shared_tensors():
                dist.broadcast(t, src=0)
        self._init_done = bool(self.initialized.item())

    def train_step(self, z: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor, mse: torch.Tensor) -> dict[str, torch.Tensor]:
        """Statistics, metrics and (every ``check_every`` steps) dead-code replacement.

        Args:
            z: ``[N, Dc]`` inputs of the lookup (detached here).
            codes: int64 ``[N]`` their codes.
            valid: bool ``[N]``.
            mse: scalar quantization error of this batch.
        """
        z = z.detach()
        weight = valid.to(z.dtype)
        with torch.no_grad():
            counts = self._batch_counts(codes, weight)
            if not self.is_initialized():  # still pooling for k-means: statistics would be discarded
                self.window_usage.add_(counts)
                return codebook_metrics(counts, self.window_usage, self.code_usage, self.dead_code.threshold, mse)
            dist = _distributed()
            if dist is not None:
                dist.all_reduce(counts)
            if not self._usage_ready:  # e.g. after loading a checkpoint: start at the uniform share
                self.code_usage.copy_((counts.sum() / self.codebook_size).expand(self.codebook_size))
                self._usage_ready = True
            self._accumulate(z, codes, weight, counts)
            decay = self.dead_code.decay
            self.code_usage.mul_(decay).add_(counts, alpha=1.0 - decay)
            self.window_usage.add_(counts)
            metrics = codebook_metrics(counts, self.window_usage, self.code_usage, self.dead_code.threshold, mse)
            self._steps += 1
            if self._steps % self.dead_code.check_every == 0:
                if self.dead_code.enabled:
                    self._replace_dead(z, valid)
                self.window_usage.zero_()
        return metrics

    def eval_metrics(self, codes: torch.Tensor, valid: torch.Tensor, mse: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metrics of one batch without touching any state."""
        with torch.no_grad():
            counts = self._batch_counts(codes, valid.to(torch.float32))
            return codebook_metrics(counts, counts, self.code_usage, self.dead_code.threshold, mse)

    def _batch_counts(self, codes: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(self.codebook_size, device=codes.device, dtype=torch.float32)
        return counts.index_add_(0, codes, weight.float())

    def _replace_dead(self, z: torch.Tensor, valid: torch.Tensor) -> None:
        """Codes under ``threshold`` x the uniform share take random valid rows of ``z``."""
        share = self.code_usage.sum() / self.codebook_size
        dead = self.code_usage < self.dead_code.threshold * share
        dead = dead & valid.any()  # nothing to sample from: keep the codes
        vectors = _sample_valid_rows(z, valid, self.codebook_size).to(self.table().dtype)
        # A revived code gets the uniform share, so it is not dead again at the next check.
        self._write_codes(vectors, share.expand(self.codebook_size), dead)
        dist = _distributed()
        if dist is not None:
            for t in self._shared_tensors():
                dist.broadcast(t, src=0)

    # ------------------------------------------------------------------ training state
    def runtime_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What exact training resume needs beyond the weights: the usage statistics
        (``code_usage``, ``window_usage``), the dead-code step counter and a k-means pool still
        being gathered. Returns ``(tensors, JSON scalars)`` for `load_runtime_state`."""
        tensors = {"code_usage": self.code_usage, "window_usage": self.window_usage}
        if self._pool:
            tensors["kmeans_pool"] = torch.cat(self._pool)
        scalars = {"usage_ready": self._usage_ready, "steps": self._steps, "pool_batches": self._pool_batches}
        return tensors, scalars

    def load_runtime_state(self, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
        """Restore what `runtime_state` returned (after the weights are loaded)."""
        with torch.no_grad():
            for name in ("code_usage", "window_usage"):
                buf = getattr(self, name)
                if tensors[name].shape != buf.shape:
                    raise ValueError(f"{name}: shape {tuple(tensors[name].shape)} does not match {tuple(buf.shape)}")
                buf.copy_(tensors[name])
        pool = tensors.get("kmeans_pool")
        self._pool = [] if pool is None else [pool.to(self.code_usage.device)]
        self._pool_batches = int(scalars["pool_batches"])
        self._steps = int(scalars["steps"])
        self._usage_ready = bool(scalars["usage_ready"])

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._init_done = None
        self._usage_ready = False
        self._pool, self._pool_batches = [], 0

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, dim={self.dim}"


class EuclideanCodebook(_Codebook):
    """Euclidean lookup, codes trained by EMA (Mimi/EnCodec).

    Args:
        codebook_size: number of codes K.
        dim: code dimension Dc.
        decay: EMA decay of ``embed_sum`` and ``cluster_usage`` (Mimi: 0.99).
        epsilon: floor of ``cluster_usage`` in the table (Mimi: 1e-5).
        kmeans_init, dead_code: countermeasures (see :mod:`.policy`); the dead-code rule reads
            its own usage EMA (``code_usage``, decay ``dead_code.decay``), so how fast dead codes
            are found does not depend on how slowly the codes learn.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: KMeansInit = KMeansInit(),
        dead_code: DeadCodePolicy = DeadCodePolicy(),
    ):
        super().__init__(codebook_size, dim, kmeans_init, dead_code)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.epsilon = epsilon
        self.register_buffer("cluster_usage", torch.ones(codebook_size))
        self.register_buffer("embed_sum", torch.randn(codebook_size, dim))

    def table(self) -> torch.Tensor:
        return self.embed_sum / self.cluster_usage.clamp(min=self.epsilon)[:, None]

    def _write_table(self, vectors, usage, where):
        usage = usage.to(self.cluster_usage.dtype)
        self.embed_sum.copy_(torch.where(where[:, None], vectors * usage.clamp(min=self.epsilon)[:, None], self.embed_sum))
        self.cluster_usage.copy_(torch.where(where, usage, self.cluster_usage))

    def _accumulate(self, z, codes, weight, counts):
        z = torch.where(weight[:, None] > 0, z, torch.zeros_like(z))  # padding may hold NaN/inf
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, z.to(self.embed_sum.dtype))
        dist = _distributed()
        if dist is not None:
            dist.all_reduce(sums)
        self.cluster_usage.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)

    def _shared_tensors(self):
        return [self.embed_sum, self.cluster_usage, self.code_usage, self.initialized]

    def _table_sources(self):
        return [self.embed_sum, self.cluster_usage]


class FactorizedCodebook(_Codebook):
    """Cosine lookup on l2-normalised vectors, codes trained by gradient (DAC).

    ``decode`` returns the raw (unnormalised) code vectors, as DAC does; the
    :class:`~speechtok.codec.quantization.vq.VectorQuantizer` adds the codebook loss that trains
    them.

    Args:
        codebook_size: number of codes K.
        dim: code dimension Dc (small, e.g. 8).
    """

    spherical = True

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        kmeans_init: KMeansInit = KMeansInit(),
        dead_code: DeadCodePolicy = DeadCodePolicy(),
    ):
        super().__init__(codebook_size, dim, kmeans_init, dead_code)
        self.weight = nn.Parameter(torch.randn(codebook_size, dim))

    def table(self) -> torch.Tensor:
        return self.weight

    def _codes_from_kmeans(self, data, centroids):
        # Spherical k-means gives unit directions; decode returns raw vectors, so store the raw
        # mean of each cluster (a unit direction times the data's mean norm if it is empty).
        data = data.float()
        assign = nearest(F.normalize(data, dim=1), centroids, cosine=True)
        counts = torch.zeros(self.codebook_size, device=data.device).index_add_(0, assign, torch.ones_like(assign, dtype=data.dtype))
        means = torch.zeros_like(centroids).index_add_(0, assign, data) / counts.clamp(min=1.0)[:, None]
        return torch.where(counts[:, None] > 0, means, centroids * data.norm(dim=1).mean())

    def _write_table(self, vectors, usage, where):
        self.weight.data.copy_(torch.where(where[:, None], vectors, self.weight.data))

    def _shared_tensors(self):
        return [self.weight.data, self.code_usage, self.initialized]

    def _table_sources(self):
        return [self.weight]
