"""Reconstruction and GAN losses (own torch implementations; shapes ``[B, C, S]`` audio).

- `MultiScaleMelLoss`: L1 between log10 mel spectrograms at several window sizes (DAC's
  ``MelSpectrogramLoss``: windows 32..2048 with 5..320 mel bins, hop = window / 4).
- `MultiScaleSTFTLoss`: L1 on log magnitudes plus spectral convergence (Parallel WaveGAN).
- `generator_adversarial_loss` / `discriminator_loss`: LSGAN (DAC, HiFi-GAN) or hinge (EnCodec).
- `feature_matching_loss`: L1 between the discriminators' hidden activations on real and fake.

All spectral losses are computed in float32 even under autocast.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _stft_mag(x: torch.Tensor, window: int, win: torch.Tensor) -> torch.Tensor:
    """``[B, C, S]`` -> magnitude ``[B*C, window // 2 + 1, frames]``."""
    x = x.reshape(-1, x.shape[-1]).float()
    spec = torch.stft(x, n_fft=window, hop_length=window // 4, win_length=window, window=win,
                      center=True, pad_mode="reflect" if x.shape[-1] > window // 2 else "constant",
                      return_complex=True)
    return spec.abs()


class MultiScaleMelLoss(nn.Module):
    """Sum over scales of mean |log10(mel(x)) - log10(mel(y))|.

    Args:
        sample_rate: Hz of the audio.
        windows: STFT window (= n_fft) per scale, samples.
        bins: mel bins per scale.
        clamp: floor on mel energy before the log.
    """

    def __init__(self, *, sample_rate: int, windows: Sequence[int], bins: Sequence[int], clamp: float = 1e-5):
        super().__init__()
        import torchaudio.functional as AF

        if len(windows) != len(bins):
            raise ValueError(f"mel windows {list(windows)} and bins {list(bins)} differ in length")
        self.windows = tuple(int(w) for w in windows)
        self.clamp = clamp
        for w, m in zip(self.windows, bins):
            fb = AF.melscale_fbanks(w // 2 + 1, 0.0, sample_rate / 2, int(m), sample_rate, norm="slaney",
                                    mel_scale="slaney")
            self.register_buffer(f"fb_{w}", fb.T.contiguous(), persistent=False)  # [M, F]
            self.register_buffer(f"win_{w}", torch.hann_window(w), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` reconstruction, ``y`` target, both ``[B, C, S]``; returns a scalar."""
        total = x.new_zeros((), dtype=torch.float32)
        for w in self.windows:
            fb, win = getattr(self, f"fb_{w}"), getattr(self, f"win_{w}")
            mx = torch.matmul(fb, _stft_mag(x, w, win))
            my = torch.matmul(fb, _stft_mag(y, w, win))
            total = total + (mx.clamp_min(self.clamp).log10() - my.clamp_min(self.clamp).log10()).abs().mean()
        return total


class MultiScaleSTFTLoss(nn.Module):
    """Sum over scales of L1(log |X|, log |Y|) + spectral convergence ||Y| - |X||_F / ||Y||_F."""

    def __init__(self, *, windows: Sequence[int], clamp: float = 1e-5):
        super().__init__()
        self.windows = tuple(int(w) for w in windows)
        self.clamp = clamp
        for w in self.windows:
            self.register_buffer(f"win_{w}", torch.hann_window(w), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros((), dtype=torch.float32)
        for w in self.windows:
            win = getattr(self, f"win_{w}")
            mx, my = _stft_mag(x, w, win), _stft_mag(y, w, win)
            log_l1 = (mx.clamp_min(self.clamp).log() - my.clamp_min(self.clamp).log()).abs().mean()
            sc = torch.linalg.vector_norm(my - mx) / torch.linalg.vector_norm(my).clamp_min(self.clamp)
            total = total + log_l1 + sc
        return total


def generator_adversarial_loss(fake_logits: Sequence[torch.Tensor], kind: str = "lsgan") -> torch.Tensor:
    """Mean over discriminators of the generator's GAN loss on its own output's logits."""
    losses = []
    for d in fake_logits:
        d = d.float()
        if kind == "lsgan":
            losses.append(((1 - d) ** 2).mean())
        elif kind == "hinge":
            losses.append(F.relu(1 - d).mean())
        else:
            raise ValueError(f"unknown adversarial loss {kind!r}; use 'lsgan' or 'hinge'")
    return torch.stack(losses).mean()


def discriminator_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor],
                       kind: str = "lsgan") -> torch.Tensor:
    """Mean over discriminators of the discriminator loss (real -> 1, fake -> 0 / hinge margins)."""
    losses = []
    for r, f in zip(real_logits, fake_logits):
        r, f = r.float(), f.float()
        if kind == "lsgan":
            losses.append(((1 - r) ** 2).mean() + (f ** 2).mean())
        elif kind == "hinge":
            losses.append(F.relu(1 - r).mean() + F.relu(1 + f).mean())
        else:
            raise ValueError(f"unknown adversarial loss {kind!r}; use 'lsgan' or 'hinge'")
    return torch.stack(losses).mean()


def feature_matching_loss(real_features: Sequence[Sequence[torch.Tensor]],
                          fake_features: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Mean over discriminators of the summed per-layer L1 between real (detached) and fake activations."""
    per_disc = []
    for rs, fs in zip(real_features, fake_features):
        per_disc.append(sum((r.detach().float() - f.float()).abs().mean() for r, f in zip(rs, fs)))
    return torch.stack(per_disc).mean()
