"""MFCC and log-mel features: HuBERT's first-iteration targets, needing no weights.

``kind="mfcc"``: 13 Kaldi MFCCs (``torchaudio.compliance.kaldi.mfcc``, ``use_energy=False``) plus
first and second deltas = 39 dims, as fairseq's ``examples/hubert/simple_kmeans/dump_mfcc_feature.py``.
``kind="logmel"``: Kaldi log-mel filterbank (``n_mels`` dims). Both at 100 Hz (25 ms window,
10 ms shift, ``snip_edges``: ``T = 1 + (S - 400) // 160`` at 16 kHz, 0 when ``S < 400``).
Each item is computed alone (cheap), so batched results equal per-item ones exactly. Frame ``j``
covers samples ``[hop * j, hop * j + win)``, so it is centred at ``(hop * j + win / 2) / sample_rate``
s (``frame_offset_s`` = 200/16000 s at 16 kHz).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from speechtok.formats import MAX_SAMPLE_RATE, get_field

from .base import Features, FeatureError, FeatureSpec, check_audio, check_keys, pad_stack

MFCC_KINDS = ("mfcc", "logmel")
# keyword options of `MFCCExtractor.load` (fields of `MFCCConfig` but ``kind``)
MFCC_OPTIONS = ("sample_rate", "n_mels", "deltas")


@dataclass(frozen=True)
class MFCCConfig:
    """``kind``: "mfcc" (13 + deltas) or "logmel"; ``n_mels`` for "logmel"; audio at ``sample_rate``."""

    kind: str = "mfcc"
    sample_rate: int = 16000
    n_mels: int = 80
    deltas: bool = True

    def __post_init__(self):
        if self.kind not in MFCC_KINDS:
            raise FeatureError(f"MFCCConfig.kind must be one of {MFCC_KINDS}, got {self.kind!r}")
        if not 1000 <= self.sample_rate <= MAX_SAMPLE_RATE or not 1 <= self.n_mels <= 1024:
            raise FeatureError(f"MFCCConfig: sample_rate {self.sample_rate} outside [1000, {MAX_SAMPLE_RATE}] "
                               f"or n_mels {self.n_mels} outside [1, 1024]")

    @classmethod
    def from_dict(cls, d: dict, path="MFCC config") -> "MFCCConfig":
        """A config read from ``path``, each field checked for type and range."""
        def f(key, kind, **kw):
            return get_field(d, key, kind, path, FeatureError, "MFCC config", **kw)

        check_keys(d, cls.__dataclass_fields__, path, "MFCC config")
        return cls(kind=f("kind", str, default="mfcc"), sample_rate=f("sample_rate", int, lo=1000, hi=MAX_SAMPLE_RATE,
                                                                       default=16000),
                   n_mels=f("n_mels", int, lo=1, hi=1024, default=80), deltas=f("deltas", bool, default=True))


class MFCCExtractor:
    """Weightless MFCC/log-mel extractor: ``extract(wav [B, C, S], lengths) -> Features [B, T, D]``."""

    def __init__(self, config: MFCCConfig):
        from speechtok.registry import config_sha256

        self.config = config
        self.sample_rate = config.sample_rate
        self.win = int(round(0.025 * config.sample_rate))
        self.hop = int(round(0.010 * config.sample_rate))
        base = 13 if config.kind == "mfcc" else config.n_mels
        dim = base * 3 if (config.deltas and config.kind == "mfcc") else base
        self.spec = FeatureSpec(kind=config.kind, layer=-1, frame_rate=config.sample_rate / self.hop, dim=dim,
                                sample_rate=config.sample_rate, checkpoint_hash=config_sha256(asdict(config)),
                                options=asdict(config))
        self.frame_offset_s = self.win / 2 / config.sample_rate

    @classmethod
    def load(cls, source=None, *, layer: Optional[int] = None, trust_pickle: bool = False, device="cpu",
             kind: str = "mfcc", **options) -> "MFCCExtractor":
        """``kind`` "mfcc"/"logmel" with `MFCC_OPTIONS`; no source, no layer (weightless, CPU)."""
        if source is not None or layer is not None:
            got = f"source {str(source)!r}" if source is not None else f"layer {layer}"
            raise FeatureError(f"{kind} features take no checkpoint (--checkpoint) and no layer (--layer); got {got}")
        check_keys(options, MFCC_OPTIONS, kind, f"{kind} extractor option")
        return cls(MFCCConfig(kind=kind, **options))

    @classmethod
    def restore(cls, config: dict, weights: dict, path, device="cpu") -> "MFCCExtractor":
        """Inverse of `describe` (read from ``path``); weightless, so ``weights`` must be empty."""
        if weights:
            raise FeatureError(f"{path}: {len(weights)} extractor tensors saved for a weightless MFCC extractor")
        return cls(MFCCConfig.from_dict(config, path))

    def describe(self) -> dict:
        return {"type": self.config.kind, "config": asdict(self.config), "checkpoint_hash": self.spec.checkpoint_hash}

    def weights(self) -> dict:
        return {}

    def num_frames(self, num_samples: int) -> int:
        return 0 if num_samples < self.win else 1 + (num_samples - self.win) // self.hop

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        import torchaudio.compliance.kaldi as kaldi
        import torchaudio.functional as AF

        n = self.num_frames(x.shape[-1])
        if n == 0:
            return torch.zeros(0, self.spec.dim)
        x = x[None]
        if self.config.kind == "mfcc":
            f = kaldi.mfcc(x, sample_frequency=self.sample_rate, use_energy=False)  # [T, 13]
            if self.config.deltas:
                f = f.T.contiguous()
                d1 = AF.compute_deltas(f)
                d2 = AF.compute_deltas(d1)
                f = torch.cat([f, d1, d2], dim=0).T.contiguous()
        else:
            f = kaldi.fbank(x, sample_frequency=self.sample_rate, num_mel_bins=self.config.n_mels)
        return f.float()

    @torch.inference_mode()
    def extract(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Features:
        mono, lengths = check_audio(wav, lengths)
        items = [self._one(mono[b, : int(n)].cpu()) for b, n in enumerate(lengths)]
        feats, flen = pad_stack(items, self.spec.dim)
        return Features(feats=feats.to(mono.device), lengths=flen.to(mono.device), spec=self.spec)
