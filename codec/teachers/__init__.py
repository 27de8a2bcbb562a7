"""Frozen semantic teachers for distillation.

Every teacher maps a batch of crops to `speechtok.codec.distill.TeacherFeatures`::

    feats = teacher(audio [B, 1, S], lengths [B], sample_rate, ids=..., offsets=...)

Teachers: `ExtractorTeacher` (any feature extractor of `speechtok.units.features`: Whisper,
HuBERT/WavLM/wav2vec2, MFCC, ..., loaded by `load_extractor`), `CachedTeacher` (features
precomputed once over the corpus by any teacher) and `ProjectionTeacher` (a fixed random
projection of log-mel frames, for tests and dry runs). `build_teacher` turns a `TeacherConfig`
into one.

Teacher kinds (`TEACHER_KINDS`): every extractor kind, plus ``"hf"`` (a Hugging Face directory,
the kind read from its ``config.json`` ``model_type``), ``"fairseq"`` (a fairseq ``.pt``: a
HuBERT-type model; needs ``trust_pickle``), ``"cached"`` and ``"random"``. A path
``whisper:NAME`` (tiny.en, base) names installed Whisper weights (`teacher_source`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol, Sequence

from speechtok.units.features import EXTRACTORS

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


TEACHER_KINDS = tuple(dict.fromkeys(("whisper", "hf", "fairseq", "cached", "random", *EXTRACTORS)))
WHISPER_PREFIX = "whisper:"


def teacher_source(path: Optional[str]) -> Optional[str]:
    """``whisper:NAME`` -> the directory of the installed Whisper weights
    (`speechtok.units.whisper.load.resolve_source`; raises FileNotFoundError); other paths unchanged."""
    if path is None or not path.startswith(WHISPER_PREFIX):
        return path
    from speechtok.units.whisper.load import resolve_source

    return resolve_source(path)


def build_teacher(cfg: "TeacherConfig", device="cpu") -> Teacher:
    """A teacher from its config (built on ``device``); the error lists the valid kinds."""
    if cfg.kind == "random":
        from .projection import ProjectionTeacher

        return ProjectionTeacher(dim=cfg.dim, frame_rate=cfg.frame_rate)
    if cfg.kind == "cached":
        from .cached import CachedTeacher

        if cfg.path is None:
            raise ValueError("teacher kind 'cached' needs a path (the folder precompute_features wrote)")
        return CachedTeacher(cfg.path)
    if cfg.kind not in TEACHER_KINDS:
        raise ValueError(f"unknown teacher kind {cfg.kind!r}; valid kinds: {list(TEACHER_KINDS)}")
    from speechtok.units.features import load_extractor

    from .extractor import ExtractorTeacher

    source = teacher_source(cfg.path)
    kind = cfg.kind
    if kind == "hf":
        from speechtok.units.features.ssl_import import hf_model_type

        if source is None:
            raise ValueError("teacher kind 'hf' needs a path (a Hugging Face model directory)")
        kind = hf_model_type(source)
        if kind not in EXTRACTORS:
            raise ValueError(f"{source}: model_type {kind!r} is no feature extractor kind ({', '.join(EXTRACTORS)})")
    elif kind == "fairseq":
        kind = "hubert"  # fairseq HuBERT and wav2vec2 share torchaudio's architecture; name it with kind "wav2vec2"
    options = dict(cfg.options)
    if kind == "whisper":
        options.setdefault("pad_to_window", cfg.pad_to_window)
    ext = load_extractor(kind, source, layer=cfg.layer, trust_pickle=cfg.trust_pickle, device=device, **options)
    return ExtractorTeacher(ext)
