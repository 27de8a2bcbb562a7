"""`ExtractorTeacher`: any `speechtok.units.features` extractor as a frozen distillation teacher.

A teacher is an extractor (HuBERT/WavLM/wav2vec2, Whisper, MFCC, ... from `load_extractor`) plus
its alignment to the codec's frames: crops are resampled to the extractor's rate, ``extract``
runs once per batch, and ``TeacherFeatures.start`` (the start of teacher frame 0 relative to the
crop) comes from the extractor's ``frame_offset_s`` (the centre of frame 0):
``start = frame_offset_s - 0.5 / frame_rate``; e.g. ``200/16000 - 0.5/50`` s for HuBERT.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from speechtok.units.features import FeatureExtractor

from ..distill import TeacherFeatures


class ExtractorTeacher:
    """Frozen teacher over ``extractor`` (a `FeatureExtractor`): ``__call__(audio [B, C, S],
    lengths [B], sample_rate) -> TeacherFeatures [B, T, D]`` at ``spec.frame_rate``."""

    def __init__(self, extractor: FeatureExtractor):
        if not isinstance(extractor, FeatureExtractor):
            raise TypeError(f"a teacher needs a FeatureExtractor, got {type(extractor).__name__}")
        if isinstance(extractor, torch.nn.Module):
            extractor.eval().requires_grad_(False)
        self.extractor = extractor
        self.spec = extractor.spec
        self.sample_rate = int(extractor.sample_rate)
        self.frame_rate = float(extractor.spec.frame_rate)
        self.dim = int(extractor.spec.dim)
        self.start_seconds = float(extractor.frame_offset_s) - 0.5 / self.frame_rate

    def describe(self) -> dict:
        """The extractor's description (no weights) and the digest of its feature spec."""
        return {"kind": self.spec.kind, "extractor": self.extractor.describe(), "spec": self.spec.to_dict(),
                "spec_digest": self.spec.digest(), "dim": self.dim, "frame_rate": self.frame_rate}

    def to(self, device) -> "ExtractorTeacher":
        if isinstance(self.extractor, torch.nn.Module):
            self.extractor.to(device)
        return self

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, lengths: torch.Tensor, sample_rate: int,
                 ids: Optional[Sequence[str]] = None, offsets: Optional[torch.Tensor] = None) -> TeacherFeatures:
        """``audio`` ``[B, C, S]`` at ``sample_rate`` (zero past ``lengths``) -> teacher features."""
        x = audio.detach().float()
        lens = torch.as_tensor(lengths, dtype=torch.long, device=x.device)
        if sample_rate != self.sample_rate:
            import torchaudio.functional as AF

            x = AF.resample(x, sample_rate, self.sample_rate)
            lens = ((lens * self.sample_rate + sample_rate - 1) // sample_rate).clamp(max=x.shape[-1])
        f = self.extractor.extract(x, lens)
        start = torch.full((f.feats.shape[0],), self.start_seconds, dtype=torch.float64)
        return TeacherFeatures(f.feats.float(), self.frame_rate, start, f.lengths.long())
