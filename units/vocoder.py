"""Unit vocoder: discrete frame units ``[B, T]`` -> speech ``[B, 1, T * hop]``.

unit embedding -> non-causal residual conv context (masked, so padding never leaks into the
valid part) -> causal SEANet decoder (`speechtok.codec.modules.seanet.SEANetDecoder`, the Mimi
decoder layout) upsampling by ``hop = prod(ratios) = sample_rate / frame_rate``.

The vocoder sees *frame* units only (one unit per feature frame). Deduped, BPE and syllable codes
are expanded to frame units first (`Codes.expand`, `UnitTokenizer.decode`), so one vocoder
decodes every output form of its tokenizer.

A vocoder is bound to the units it was trained on: ``units_model_id`` (the tokenizer's
``units_id``, name + k-means hash) and ``n_units`` (K) are part of its config and checked when it
is attached to a tokenizer or loaded with one.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn

from speechtok.formats import MAX_CODEBOOK_SIZE, MAX_SAMPLE_RATE, get_field, safe_text

from .features.base import FeatureError, check_keys

VOCODER_VERSION = 1


class VocoderError(FeatureError):
    """A vocoder config or attachment problem (the message names what is wrong)."""


@dataclass(frozen=True)
class UnitVocoderConfig:
    """Sizes of a `UnitVocoder`.

    Attributes:
        n_units: K, the unit vocabulary (frame units ``0..K-1``).
        sample_rate: output Hz.
        frame_rate: unit frames per second; ``sample_rate / frame_rate`` must equal ``prod(ratios)``.
        units_model_id: the tokenizer units this vocoder was trained on (``UnitTokenizer.units_id``);
            empty until attached/trained.
        embed_dim: unit embedding and context width (= SEANet latent ``dimension``).
        context_layers: residual conv blocks over the unit sequence before upsampling.
        context_kernel: their kernel size (odd; non-causal, ``(k-1)/2`` frames each side).
        n_filters: SEANet decoder channels at the last scale (doubled per earlier scale).
        ratios: SEANet upsampling ratios (decoder order), e.g. ``(8, 5, 4)`` for 16 kHz / 100 Hz
            (`vocoder_config_for` picks them from the tokenizer's hop when not given).
        n_residual_layers: residual blocks per SEANet scale.
    """

    n_units: int
    sample_rate: int = 16000
    frame_rate: float = 100.0
    units_model_id: str = ""
    embed_dim: int = 128
    context_layers: int = 3
    context_kernel: int = 5
    n_filters: int = 32
    ratios: tuple[int, ...] = (8, 5, 4)
    n_residual_layers: int = 1

    def __post_init__(self):
        object.__setattr__(self, "ratios", tuple(int(r) for r in self.ratios))
        if self.n_units < 1:
            raise VocoderError(f"n_units must be >= 1, got {self.n_units}")
        hop = self.sample_rate / self.frame_rate
        if abs(hop - math.prod(self.ratios)) > 1e-6:
            raise VocoderError(f"prod(ratios) = {math.prod(self.ratios)} must equal sample_rate / frame_rate = "
                               f"{self.sample_rate} / {self.frame_rate:g} = {hop:g}")
        if self.context_kernel % 2 != 1:
            raise VocoderError(f"context_kernel must be odd, got {self.context_kernel}")

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratios"] = list(self.ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict, path="vocoder config") -> "UnitVocoderConfig":
        """A config read from ``path``, every size checked for type and range (see `_BOUNDS`)."""
        if not isinstance(d, dict):
            raise VocoderError(f"{path}: vocoder config must be a JSON object")
        check_keys(d, cls.__dataclass_fields__, path, "vocoder config", VocoderError)
        kw = {}
        for key, (kind, lo, hi) in _BOUNDS.items():
            default = cls.__dataclass_fields__[key].default
            kw[key] = get_field(d, key, kind, path, VocoderError, "vocoder config", lo=lo, hi=hi,
                                **({} if key == "n_units" else {"default": default}))
        ratios = d.get("ratios", cls.ratios)
        if not isinstance(ratios, (list, tuple)) or not 1 <= len(ratios) <= 8 or \
                not all(type(r) is int and 1 <= r <= 64 for r in ratios):
            raise VocoderError(f"{path}: vocoder config 'ratios' must be 1-8 ints in [1, 64], "
                               f"got {safe_text(ratios, 60)}")
        return cls(**kw, ratios=tuple(ratios))


_BOUNDS = {  # key -> (type, lo, hi) of a vocoder config read from a file
    "n_units": (int, 1, MAX_CODEBOOK_SIZE), "sample_rate": (int, 1, MAX_SAMPLE_RATE),
    "frame_rate": (float, 1e-3, MAX_SAMPLE_RATE), "units_model_id": (str, None, None),
    "embed_dim": (int, 1, 4096), "context_layers": (int, 0, 64), "context_kernel": (int, 1, 255),
    "n_filters": (int, 1, 1024), "n_residual_layers": (int, 0, 16)}


class ContextBlock(nn.Module):
    """``x + conv1x1(gelu(conv_k(gelu(x))))`` on ``[B, D, T]``, zeroed past each item's length."""

    def __init__(self, dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2)
        self.proj = nn.Conv1d(dim, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, D, T]``, ``mask [B, 1, T]`` float -> ``[B, D, T]``."""
        return (x + self.proj(self.act(self.conv(self.act(x))))) * mask


class UnitVocoder(nn.Module):
    """Frame units -> audio (see module doc). Build with `build_vocoder`."""

    def __init__(self, cfg: UnitVocoderConfig):
        super().__init__()
        from speechtok.codec.config import SEANetConfig
        from speechtok.codec.modules.seanet import SEANetDecoder

        self.config = cfg
        self.sample_rate = int(cfg.sample_rate)
        self.frame_rate = float(cfg.frame_rate)
        self.hop = cfg.hop_length
        self.embed = nn.Embedding(cfg.n_units, cfg.embed_dim)
        self.context = nn.ModuleList([ContextBlock(cfg.embed_dim, cfg.context_kernel, 2 ** i)
                                      for i in range(cfg.context_layers)])
        self.decoder = SEANetDecoder(SEANetConfig(channels=1, dimension=cfg.embed_dim, n_filters=cfg.n_filters,
                                                  ratios=cfg.ratios, n_residual_layers=cfg.n_residual_layers))

    def forward(self, units: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Frame units ``[B, T]`` long (anything, e.g. -1, past ``lengths``), ``lengths [B]`` frames
        -> audio ``[B, 1, T * hop]`` float, zero past ``lengths * hop``.

        Padding-aware: each item's valid output equals what it gives alone (non-causal context is
        masked; the SEANet decoder is causal)."""
        if units.dim() != 2:
            raise ValueError(f"units must be [B, T], got shape {tuple(units.shape)}")
        B, T = units.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=units.device)
        if T == 0:
            return torch.zeros(B, 1, 0, device=units.device, dtype=self.embed.weight.dtype)
        mask = (torch.arange(T, device=units.device)[None] < lengths.to(units.device)[:, None])
        if bool(((units < 0) | (units >= self.config.n_units))[mask].any()):
            bad = units[mask][(units[mask] < 0) | (units[mask] >= self.config.n_units)]
            raise ValueError(f"unit {int(bad[0])} out of range [0, {self.config.n_units}) inside lengths")
        fmask = mask[:, None, :].to(self.embed.weight.dtype)
        x = self.embed(units.clamp(0, self.config.n_units - 1)).transpose(1, 2) * fmask  # [B, D, T]
        for block in self.context:
            x = block(x, fmask)
        y = self.decoder(x)  # [B, 1, T * hop]
        smask = torch.arange(y.shape[-1], device=y.device)[None] < (lengths.to(y.device) * self.hop)[:, None]
        return y * smask[:, None, :]

    def weights_hash(self) -> str:
        """sha256 of the weights (the codec's content hash of a state dict)."""
        from speechtok.codec.tokenizer import state_dict_sha256

        return state_dict_sha256(self.state_dict())


def default_ratios(hop: int) -> tuple[int, ...]:
    """Upsampling ratios (each <= 8, largest first) whose product is ``hop``: 160 -> (8, 5, 4),
    320 -> (8, 8, 5); raises `VocoderError` if ``hop`` has a prime factor > 8."""
    out, rest = [], int(hop)
    while rest > 1:
        f = next((f for f in range(8, 1, -1) if rest % f == 0), None)
        if f is None:
            raise VocoderError(f"hop {hop} has a prime factor > 8: give the vocoder ratios explicitly")
        out.append(f)
        rest //= f
    return tuple(out)


def build_vocoder(cfg: UnitVocoderConfig) -> UnitVocoder:
    """The one builder: `UnitVocoderConfig` -> `UnitVocoder`."""
    return UnitVocoder(cfg)


def vocoder_config_for(tokenizer, **overrides) -> UnitVocoderConfig:
    """A config matching ``tokenizer`` (K, rates, units id); ``overrides`` set the sizes."""
    hop = tokenizer.sample_rate / tokenizer.frame_rate
    if "ratios" not in overrides and abs(hop - round(hop)) < 1e-6:
        overrides = {**overrides, "ratios": default_ratios(int(round(hop)))}
    return UnitVocoderConfig(n_units=int(tokenizer.units_codebook_sizes[0]), sample_rate=int(tokenizer.sample_rate),
                             frame_rate=float(tokenizer.frame_rate), units_model_id=tokenizer.units_id,
                             **overrides)


def check_vocoder_matches(cfg: UnitVocoderConfig, tokenizer, where: str = "vocoder") -> None:
    """Refuse a vocoder trained for other units (id, K or rates differ)."""
    want = (tokenizer.units_id, int(tokenizer.units_codebook_sizes[0]), int(tokenizer.sample_rate),
            float(tokenizer.frame_rate))
    got = (cfg.units_model_id, cfg.n_units, cfg.sample_rate, float(cfg.frame_rate))
    if want != got:
        raise VocoderError(f"{where} was trained for units {got[0]!r} (K={got[1]}, {got[2]} Hz audio, "
                           f"{got[3]:g} Hz frames), but this tokenizer makes {want[0]!r} (K={want[1]}, "
                           f"{want[2]} Hz, {want[3]:g} Hz frames)")


__all__ = ["UnitVocoderConfig", "UnitVocoder", "build_vocoder", "vocoder_config_for", "default_ratios", "check_vocoder_matches",
           "VocoderError", "VOCODER_VERSION"]
