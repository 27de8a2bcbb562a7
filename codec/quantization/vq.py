"""One vector quantizer: (optional) projection, codebook lookup, straight-through estimator, losses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from .codebook import EuclideanCodebook, FactorizedCodebook
from .metrics import masked_mse
from .policy import DeadCodePolicy, KMeansInit

Lookup = Literal["euclidean", "factorized"]


@dataclass(frozen=True)
class QuantizerOutput:
    """What every quantizer's ``forward`` returns (Moshi's ``QuantizedResult``).

    Attributes:
        x: quantized latent ``[B, D, T]``; straight-through in training (its gradient reaches
            the input unchanged); 0 at padding frames.
        codes: int64 ``[B, K, T]`` (K codebooks used); -1 where the frame is padding (or the
            codebook was dropped for that item by quantizer dropout), like ``Codes``.
        penalty: scalar: the weighted commitment (+ codebook) losses to add to the training loss
            (0 in eval mode).
        metrics: per-codebook tensors named ``"q{i}/perplexity"``, ``"q{i}/entropy_bits"``,
            ``"q{i}/used"``, ``"q{i}/dead"``, ``"q{i}/mse"`` (+ ``"mse"`` for residual
            quantizers: error of the whole latent). 0-dim tensors; call ``.item()`` only when
            logging.
        n_q: int64 ``[B]``: codebooks that contributed to ``x`` per item (quantizer dropout
            makes it vary in training), or None when all K did.
        semantic: ``[B, D, T]``: the semantic codebooks' quantized latent (the distillation
            target's counterpart), or None for quantizers without semantic codebooks.
    """

    x: torch.Tensor
    codes: torch.Tensor
    penalty: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    n_q: Optional[torch.Tensor] = None
    semantic: Optional[torch.Tensor] = None


def apply_1x1(conv: Optional[nn.Conv1d], x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for ``x`` ``[B, C, T]``, also for ``T == 0`` (where ``nn.Conv1d`` raises)."""
    if conv is None:
        return x
    if x.shape[-1] == 0:
        return x.new_zeros(x.shape[0], conv.out_channels, 0)
    return conv(x)


def check_latent(x: torch.Tensor, mask: Optional[torch.Tensor], dim: int, who: str) -> torch.Tensor:
    """Validate ``x`` ``[B, D, T]`` and ``mask`` ``[B, T]``; return the bool mask (all True if None)."""
    if x.dim() != 3 or x.shape[1] != dim:
        raise ValueError(f"{who} expects x [B, {dim}, T], got shape {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
    if mask.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"{who} expects mask [B, T] = {(x.shape[0], x.shape[2])}, got shape {tuple(mask.shape)}")
    return mask.to(device=x.device, dtype=torch.bool)


class VectorQuantizer(nn.Module):
    """A single codebook quantizer on channels-first latents.

    ``forward(x [B, D, T], mask [B, T] | None)``: project to ``codebook_dim`` (when it differs
    from ``dim``, or always for the factorized lookup), look up the nearest code, decode, apply
    the straight-through estimator and project back.

    Losses (the ``penalty``), averaged over valid frames and dimensions in codebook space:
        ``commitment_weight * |z - sg(q)|^2`` pulls the input towards its code (gradient to the
        encoder); for the factorized lookup also ``codebook_weight * |sg(z) - q|^2`` trains the
        code vectors (the EMA codebook needs no such loss).

    Args:
        dim: latent channels D.
        codebook_size: codes K.
        codebook_dim: lookup dimension; defaults to ``dim`` (euclidean) or 8 (factorized).
        lookup: ``"euclidean"`` (EMA, Mimi) or ``"factorized"`` (l2-normalised cosine, DAC).
        decay: EMA decay of the euclidean codebook.
        commitment_weight, codebook_weight: loss weights (DAC: 0.25 and 1.0).
        kmeans_init, dead_code: collapse countermeasures.

    Weights: ``codebook.*`` (see :mod:`.codebook`); ``in_proj``/``out_proj`` are 1x1 convolutions
    with bias (DAC's ``in_proj``/``out_proj``, without weight norm).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: Optional[int] = None,
        lookup: Lookup = "euclidean",
        decay: float = 0.99,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        kmeans_init: KMeansInit = KMeansInit(),
        dead_code: DeadCodePolicy = DeadCodePolicy(),
    ):
        super().__init__()
        if lookup not in ("euclidean", "factorized"):
            raise ValueError(f"lookup must be 'euclidean' or 'factorized', got {lookup!r}")
        if codebook_dim is None:
            codebook_dim = 8 if lookup == "factorized" else dim
        self.dim, self.codebook_dim, self.lookup = dim, codebook_dim, lookup
        self.commitment_weight, self.codebook_weight = commitment_weight, codebook_weight
        if lookup == "factorized" or codebook_dim != dim:
            self.in_proj = nn.Conv1d(dim, codebook_dim, 1)
            self.out_proj = nn.Conv1d(codebook_dim, dim, 1)
        else:
            self.in_proj = self.out_proj = None
        if lookup == "euclidean":
            self.codebook = EuclideanCodebook(codebook_size, codebook_dim, decay=decay, kmeans_init=kmeans_init, dead_code=dead_code)
        else:
            self.codebook = FactorizedCodebook(codebook_size, codebook_dim, kmeans_init=kmeans_init, dead_code=dead_code)

    @property
    def codebook_size(self) -> int:
        return self.codebook.codebook_size

    def _project_in(self, x: torch.Tensor) -> torch.Tensor:
        z = apply_1x1(self.in_proj, x)
        return z.transpose(1, 2).reshape(-1, self.codebook_dim)  # [B*T, Dc]

    def _project_out(self, z: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        B, _, T = shape
        z = z.reshape(B, T, self.codebook_dim).transpose(1, 2)
        return apply_1x1(self.out_proj, z)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, n_q: Optional[int] = None) -> QuantizerOutput:
        """Quantize ``x`` ``[B, D, T]``; ``mask`` bool ``[B, T]`` (True = valid). Codes ``[B, 1, T]``."""
        mask = check_latent(x, mask, self.dim, "VectorQuantizer")
        if n_q is not None and n_q < 1:
            raise ValueError(f"n_q must be >= 1 for a single quantizer, got {n_q}")
        valid = mask.reshape(-1)
        x = x.masked_fill(~mask[:, None, :], 0.0)  # padding content (even NaN) reaches nothing
        z = self._project_in(x)
        if self.training:
            self.codebook.maybe_initialize(z, valid)
        codes = self.codebook.encode(z)
        q = self.codebook.decode(codes)
        weight = valid.to(z.dtype)
        mse = masked_mse(z.detach(), q.detach(), weight)
        if self.training:
            penalty = self.commitment_weight * masked_mse(z, q.detach(), weight)
            if self.lookup == "factorized":
                penalty = penalty + self.codebook_weight * masked_mse(z.detach(), q, weight)
            metrics = self.codebook.train_step(z, codes, valid, mse)
            q = z + (q - z).detach()  # straight-through estimator
        else:
            penalty = torch.zeros((), device=x.device)
            metrics = self.codebook.eval_metrics(codes, valid, mse)
        out = self._project_out(q, x.shape).masked_fill(~mask[:, None, :], 0.0)
        codes = codes.masked_fill(~valid, -1).reshape(x.shape[0], 1, x.shape[2])
        return QuantizerOutput(x=out, codes=codes, penalty=penalty, metrics={f"q0/{k}": v for k, v in metrics.items()})

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, n_q: Optional[int] = None) -> torch.Tensor:
        """Codes int64 ``[B, 1, T]`` of ``x`` ``[B, D, T]``, -1 at padding (no state changes, any mode)."""
        mask = check_latent(x, mask, self.dim, "VectorQuantizer.encode")
        codes = self.codebook.encode(self._project_in(x)).reshape(x.shape[0], 1, x.shape[2])
        return codes.masked_fill(~mask[:, None, :], -1)

    @torch.no_grad()
    def code_margins(self, x: torch.Tensor, codes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Near-tie margins (`kmeans.code_margins`) of ``encode(x)``: ``x`` ``[B, D, T]`` -> float
        ``[B, 1, T]`` (``codes`` is not needed: one codebook; accepted as in the residual quantizers)."""
        check_latent(x, None, self.dim, "VectorQuantizer.code_margins")
        return self.codebook.margins(self._project_in(x)).reshape(x.shape[0], 1, x.shape[2])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Latent ``[B, D, T]`` of codes ``[B, 1, T]`` (or ``[B, T]``); frames with code -1 decode to 0."""
        if codes.dim() == 3:
            if codes.shape[1] != 1:
                raise ValueError(f"VectorQuantizer.decode expects codes [B, 1, T], got shape {tuple(codes.shape)}")
            codes = codes[:, 0]
        if codes.dim() != 2:
            raise ValueError(f"VectorQuantizer.decode expects codes [B, 1, T], got shape {tuple(codes.shape)}")
        B, T = codes.shape
        valid = codes >= 0
        q = self.codebook.decode(codes.clamp(min=0).reshape(-1))
        out = self._project_out(q, torch.Size((B, self.dim, T)))
        return out * valid[:, None, :].to(out.dtype)
