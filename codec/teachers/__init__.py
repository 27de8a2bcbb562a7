"""Frozen semantic teachers for distillation.

Every teacher maps a batch of crops to `speechtok.codec.distill.TeacherFeatures`::

    feats = teacher(audio [B, 1, S], lengths [B], sample_rate, ids=..., offsets=...)

Teachers: `WhisperTeacher` (ctranslate2 encoder states), `SSLTeacher` (HuBERT/WavLM through
torchaudio), `CachedTeacher` (features precomputed once over the corpus) and `ProjectionTeacher`
(a fixed random projection of log-mel frames, for tests and dry runs). `build_teacher` turns a
`TeacherConfig` into one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..distill import TeacherFeatures
    from ..train.config import TeacherConfig


class Teacher(Protocol):
    """What the trainer needs of a teacher."""

    dim: int
    frame_rate: float

    def __call__(self, audio: "torch.Tensor", lengths: "torch.Tensor", sample_rate: int,
                 ids: Optional[Sequence[str]] = None, offsets: Optional["torch.Tensor"] = None
                 ) -> "TeacherFeatures": ...

    def describe(self) -> dict: ...


TEACHER_KINDS = ("whisper", "hf", "fairseq", "cached", "random")


def build_teacher(cfg: "TeacherConfig") -> Teacher:
    """A teacher from its config; the error lists the valid kinds."""
    if cfg.kind == "random":
        from .projection import ProjectionTeacher

        return ProjectionTeacher(dim=cfg.dim, frame_rate=cfg.frame_rate)
    if cfg.path is None:
        raise ValueError(f"teacher kind {cfg.kind!r} needs a path")
    if cfg.kind == "whisper":
        from .whisper import WhisperTeacher

        return WhisperTeacher(cfg.path, device=cfg.device, threads=cfg.threads, pad_to_window=cfg.pad_to_window)
    if cfg.kind in ("hf", "fairseq"):
        from .ssl import load_ssl_teacher

        return load_ssl_teacher(cfg.path, layer=cfg.layer, trust_pickle=cfg.trust_pickle,
                                fairseq=cfg.kind == "fairseq")
    if cfg.kind == "cached":
        from .cached import CachedTeacher

        return CachedTeacher(cfg.path)
    raise ValueError(f"unknown teacher kind {cfg.kind!r}; valid kinds: {list(TEACHER_KINDS)}")
