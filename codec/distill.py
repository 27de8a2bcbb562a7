"""Semantic distillation: a projection head and cosine losses against frozen teacher features.

The codec exposes a semantic latent ``[B, T, D]`` at its token rate (the output of the semantic
codebook of a Mimi split RVQ, or of RVQ level 1 in the SpeechTokenizer topology). A linear head maps
it to the teacher's width; teacher features are interpolated in time onto the token grid
(`align_features`) and compared with

- ``"frame_cosine"`` (Mimi): mean over valid frames of ``1 - cos(pred_t, target_t)``;
- ``"dim_cosine"`` (SpeechTokenizer's D-axis loss): for each feature dimension ``d`` the cosine
  similarity of the two time series, loss ``mean_d -log sigmoid(cos_d)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

DISTILL_LOSSES = ("frame_cosine", "dim_cosine")
TARGET_NORMS = ("none", "utterance")


def standardize(target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per item and feature dimension, ``target [B, T, D]`` minus its mean over the valid frames
    of ``mask [B, T]``, divided by their standard deviation (CMVN). Raw Whisper states share a
    large common direction (measured: cosine 0.64 between a frame and the global mean, Whisper-base
    layer 4), so a frame cosine against them is mostly won by predicting that constant; against
    standardized targets a constant scores cosine 0 on average and only content helps."""
    m = mask.to(target.dtype)[..., None]
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    mean = (target * m).sum(1, keepdim=True) / n
    var = ((target - mean).pow(2) * m).sum(1, keepdim=True) / n
    return (target - mean) / (var + eps).sqrt()


@dataclass(frozen=True, eq=False)
class TeacherFeatures:
    """Teacher output for a batch of crops.

    Attributes:
        features: float32 ``[B, T_t, D]``.
        frame_rate: teacher frames per second (Hz).
        start: float ``[B]``: time (s) of the start of teacher frame 0 relative to the crop start
            (0 when the teacher ran on the crop itself; ``-offset`` + slice start for cached
            whole-utterance features). Frame ``j`` covers ``start + [j, j + 1) / frame_rate``.
        lengths: int64 ``[B]`` valid teacher frames.
    """

    features: torch.Tensor
    frame_rate: float
    start: torch.Tensor
    lengths: torch.Tensor


def align_features(tf: TeacherFeatures, num_frames: int, frame_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly interpolate teacher features onto a token grid.

    Token frame ``t`` is centred at ``(t + 0.5) / frame_rate`` seconds from the crop start.

    Returns:
        ``(features [B, num_frames, D], valid [B, num_frames] bool)``; frames whose centre falls
        outside the teacher's valid frames are invalid.
    """
    feats = tf.features.float()
    B, Tt, D = feats.shape
    dev = feats.device
    centers = (torch.arange(num_frames, device=dev, dtype=torch.float64) + 0.5) / frame_rate  # [T]
    pos = (centers[None, :] - tf.start.to(dev, torch.float64)[:, None]) * tf.frame_rate - 0.5  # [B, T]
    lens = tf.lengths.to(dev)
    valid = (pos >= -0.5) & (pos < lens[:, None].double() - 0.5)
    hi_max = (lens - 1).clamp_min(0)[:, None]
    pos = pos.clamp(min=0.0)
    lo = pos.floor().long().clamp(max=Tt - 1)
    lo = torch.minimum(lo, hi_max)
    hi = torch.minimum(lo + 1, hi_max)
    w = (pos - lo.double()).clamp(0.0, 1.0).float()[..., None]
    g = lambda idx: torch.gather(feats, 1, idx[..., None].expand(B, num_frames, D))  # noqa: E731
    out = g(lo) * (1 - w) + g(hi) * w
    return out, valid


def distill_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "frame_cosine",
                 target_norm: str = "none") -> torch.Tensor:
    """Cosine distillation loss between ``pred`` and ``target`` ``[B, T, D]`` over ``mask`` ``[B, T]``;
    ``target_norm="utterance"`` compares with the `standardize` d target."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and teacher {tuple(target.shape)} differ")
    if target_norm not in TARGET_NORMS:
        raise ValueError(f"unknown distillation target_norm {target_norm!r}; choose from {TARGET_NORMS}")
    pred, target = pred.float(), target.float()
    if target_norm == "utterance":
        target = standardize(target, mask)
    m = mask.to(pred.dtype)
    if kind == "frame_cosine":
        cos = F.cosine_similarity(pred, target, dim=-1, eps=1e-6)  # [B, T]
        return ((1 - cos) * m).sum() / m.sum().clamp_min(1.0)
    if kind == "dim_cosine":
        p, t = pred * m[..., None], target * m[..., None]
        cos = F.cosine_similarity(p, t, dim=1, eps=1e-6)  # [B, D]
        return -F.logsigmoid(cos).mean()
    raise ValueError(f"unknown distillation loss {kind!r}; choose from {DISTILL_LOSSES}")


class DistillHead(nn.Module):
    """Linear projection from the codec's semantic latent to the teacher's feature width.

    Args:
        in_dim: semantic latent width ``D`` (features ``[B, T, D]``).
        teacher_dim: teacher feature width.
    """

    def __init__(self, *, in_dim: int, teacher_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, teacher_dim)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, T, in_dim]`` -> ``[B, T, teacher_dim]``."""
        return self.proj(latent)

    def loss(self, latent: torch.Tensor, teacher: TeacherFeatures, frame_rate: float,
             frame_mask: Optional[torch.Tensor] = None, kind: str = "frame_cosine",
             target_norm: str = "none") -> torch.Tensor:
        """Distillation loss of ``latent`` ``[B, T, in_dim]`` (token rate ``frame_rate``) against
        ``teacher``; ``frame_mask`` ``[B, T]`` marks frames of real (unpadded) audio."""
        pred = self(latent)
        target, valid = align_features(teacher, pred.shape[1], frame_rate)
        if frame_mask is not None:
            valid = valid & frame_mask.to(valid.device)
        return distill_loss(pred, target.to(pred.device), valid, kind, target_norm)
