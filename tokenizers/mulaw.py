"""A weightless reference tokenizer: mu-law companding (ITU-T G.711 style, continuous mu) to
``2**bits`` levels at the audio sample rate. One codebook, one token per sample.

It is no neural codec: 16 kHz x 8 bit = 128 kbit/s. It exists as an exactly specified baseline for
benchmarks (the top-bitrate anchor) and as a fast tokenizer for pipeline tests.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .codes import Codes
from .protocol import BaseTokenizer, Waveform, length_mask
from .registry import config_sha256


@dataclass(frozen=True)
class MuLawConfig:
    sample_rate: int = 16000
    bits: int = 8
    mu: float = 255.0


class MuLawTokenizer(BaseTokenizer):
    """``encode``: audio ``[B, C, S]`` -> codes ``[B, 1, S']`` (S' samples at ``sample_rate``)."""

    def __init__(self, config: MuLawConfig = MuLawConfig(), name: str = "mulaw-16k"):
        super().__init__()
        self.config = config
        self.sample_rate = int(config.sample_rate)
        self.frame_rate = float(config.sample_rate)
        self.levels = 2 ** int(config.bits)
        self.codebook_sizes = (self.levels,)
        self.name = name
        self.weights_hash = config_sha256(asdict(config))

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> Codes:
        mu = self.config.mu
        x = wav[:, 0].clamp(-1, 1)
        y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)  # [-1, 1]
        q = torch.round((y + 1) / 2 * (self.levels - 1)).long().clamp(0, self.levels - 1)
        return self.make_codes(q[:, None, :], lengths, audio_lengths=lengths.clone())

    def _decode(self, codes: Codes) -> Waveform:
        mu = self.config.mu
        q = codes.codes[:, 0].clamp_min(0).float()
        y = q / (self.levels - 1) * 2 - 1
        x = torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu
        x = x * length_mask(codes.lengths, x.shape[-1])
        return Waveform(x[:, None, :].contiguous(), codes.lengths.clone(), self.sample_rate)


def load_mulaw(directory: Path, meta: dict, device: str = "cpu") -> MuLawTokenizer:
    return MuLawTokenizer(MuLawConfig(**meta.get("config", {})), name=meta.get("name", directory.name)).to(device)
