"""GAN discriminators for codec training.

- `PeriodDiscriminator` / multi-period (HiFi-GAN's MPD, also in DAC): audio ``[B, 1, S]`` folded to
  ``[B, 1, S / p, p]`` and convolved along time, so each sees every ``p``-th sample.
- `STFTDiscriminator` / multi-scale STFT (EnCodec's MS-STFTD): a 2-D conv net over the complex
  spectrogram (real and imaginary parts as two channels) at several window sizes.

`Discriminators` runs them all and returns a `DiscOutput` with one logit map and one list of hidden
activations (for feature matching) per sub-discriminator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from .config import DiscriminatorConfig


@dataclass(frozen=True, eq=False)
class DiscOutput:
    """``logits[i]``: output map of sub-discriminator ``i``; ``features[i]``: its hidden activations."""

    logits: list[torch.Tensor]
    features: list[list[torch.Tensor]]


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator; channels ``c, 4c, 16c, 32c, 32c`` (HiFi-GAN: c = 32)."""

    def __init__(self, *, period: int, channels: int = 32):
        super().__init__()
        self.period = int(period)
        c = channels
        widths = [1, c, 4 * c, 16 * c, 32 * c, 32 * c]
        self.convs = nn.ModuleList()
        for i in range(5):
            stride = (3, 1) if i < 4 else (1, 1)
            self.convs.append(weight_norm(nn.Conv2d(widths[i], widths[i + 1], (5, 1), stride, padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` ``[B, 1, S]`` -> (logits ``[B, 1, S', p]``, hidden activations)."""
        B, C, S = x.shape
        pad = (-S) % self.period
        if pad:
            x = F.pad(x, (0, pad), mode="reflect" if pad < S else "constant")
        x = x.reshape(B, C, -1, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        return self.post(x), feats


class STFTDiscriminator(nn.Module):
    """EnCodec-style discriminator on the complex STFT (``window`` = n_fft, hop = window / 4)."""

    def __init__(self, *, window: int, channels: int = 32, dilations: Sequence[int] = (1, 2, 4)):
        super().__init__()
        self.window = int(window)
        self.register_buffer("win", torch.hann_window(self.window), persistent=False)
        c = channels
        self.convs = nn.ModuleList([weight_norm(nn.Conv2d(2, c, (3, 9), padding=(1, 4)))])
        for d in dilations:
            self.convs.append(weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), dilation=(d, 1),
                                                    padding=(d, 4))))
        self.convs.append(weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))))
        self.post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` ``[B, 1, S]`` -> (logits ``[B, 1, frames, freq']``, hidden activations)."""
        spec = torch.stft(x[:, 0].float(), n_fft=self.window, hop_length=self.window // 4, window=self.win,
                          center=True, return_complex=True, normalized=True)
        z = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3).to(x.dtype)  # [B, 2, T, F]
        feats = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), 0.2)
            feats.append(z)
        return self.post(z), feats


class Discriminators(nn.Module):
    """All sub-discriminators of a `DiscriminatorConfig`."""

    def __init__(self, *, periods: Sequence[int], period_channels: int, stft_windows: Sequence[int],
                 stft_channels: int):
        super().__init__()
        self.subs = nn.ModuleList(
            [PeriodDiscriminator(period=p, channels=period_channels) for p in periods]
            + [STFTDiscriminator(window=w, channels=stft_channels) for w in stft_windows])
        if not len(self.subs):
            raise ValueError("discriminator config has no periods and no STFT windows")

    def forward(self, x: torch.Tensor) -> DiscOutput:
        """``x`` audio ``[B, C, S]`` (channels are folded into the batch)."""
        if x.dim() != 3:
            raise ValueError(f"discriminator input must be [B, C, S], got {tuple(x.shape)}")
        x = x.reshape(-1, 1, x.shape[-1])
        logits, feats = [], []
        for d in self.subs:
            lg, ft = d(x)
            logits.append(lg)
            feats.append(ft)
        return DiscOutput(logits, feats)


def build_discriminators(cfg: DiscriminatorConfig) -> Discriminators:
    return Discriminators(periods=cfg.periods, period_channels=cfg.period_channels,
                          stft_windows=cfg.stft_windows, stft_channels=cfg.stft_channels)
