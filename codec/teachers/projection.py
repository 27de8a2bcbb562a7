"""`ProjectionTeacher`: a fixed, seeded random projection of log-mel frames.

Not a speech model: a cheap deterministic teacher whose features depend on the audio's spectrum,
so a codec can learn to predict them. Used by tests and for dry runs of the distillation path.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..distill import TeacherFeatures


class ProjectionTeacher:
    """``tanh(W @ log_mel)`` at ``frame_rate`` Hz, computed at 16 kHz.

    Args:
        dim: feature width ``D``.
        frame_rate: Hz; 16000 / frame_rate must be an integer hop.
        n_mels: mel bins before the projection.
        seed: seeds ``W``.
    """

    sample_rate = 16000

    def __init__(self, *, dim: int = 64, frame_rate: float = 50.0, n_mels: int = 40, seed: int = 0):
        import torchaudio

        hop = self.sample_rate / frame_rate
        if hop != int(hop):
            raise ValueError(f"frame_rate {frame_rate} does not divide {self.sample_rate} Hz into whole samples")
        self.dim, self.frame_rate, self.hop, self.seed = int(dim), float(frame_rate), int(hop), seed
        self.mel = torchaudio.transforms.MelSpectrogram(self.sample_rate, n_fft=max(2 * self.hop, 400),
                                                        hop_length=self.hop, n_mels=n_mels, center=True)
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(self.dim, n_mels, generator=g) / n_mels ** 0.5

    def describe(self) -> dict:
        return {"kind": "random", "dim": self.dim, "frame_rate": self.frame_rate, "seed": self.seed}

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, lengths: torch.Tensor, sample_rate: int,
                 ids: Optional[Sequence[str]] = None, offsets: Optional[torch.Tensor] = None) -> TeacherFeatures:
        """``audio`` ``[B, 1, S]`` at ``sample_rate`` -> features ``[B, T, dim]``."""
        x = audio.detach().float().mean(dim=1).cpu()
        if sample_rate != self.sample_rate:
            import torchaudio.functional as AF

            x = AF.resample(x, sample_rate, self.sample_rate)
        lens16 = (lengths.cpu() * self.sample_rate + sample_rate - 1) // sample_rate
        m = self.mel.to(x.device)(x).clamp_min(1e-5).log()  # [B, M, frames], frame j centred at j * hop
        feats = torch.tanh(torch.einsum("dm,bmt->btd", self.weight, m))
        n = (lens16 + self.hop - 1) // self.hop
        start = torch.full((x.shape[0],), -0.5 / self.frame_rate, dtype=torch.float64)
        return TeacherFeatures(feats, self.frame_rate, start, n.clamp(max=feats.shape[1]))
