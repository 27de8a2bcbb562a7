"""`WhisperTeacher`: Whisper encoder states through ctranslate2 (e.g. whisper-base: 512-d, 50 Hz).

Input is faster-whisper's log-mel (n_fft 400, hop 160 at 16 kHz, Whisper's normalization). With
``pad_to_window`` (default) each input is zero-padded to Whisper's 30 s window as in training, which
gives the encoder states Whisper was trained to produce; long inputs are encoded in 30 s windows.
Without it, only the crop itself is encoded (faster on short crops, slightly different states).
Encoder frame ``j`` is centred at ``(j + 0.5) / 50`` s, so ``TeacherFeatures.start`` is 0.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..distill import TeacherFeatures

WINDOW_SAMPLES = 30 * 16000
MEL_HOP = 160


class WhisperTeacher:
    """Frozen Whisper encoder.

    Args:
        path: a ctranslate2 Whisper directory (``model.bin`` + ``config.json``).
        device: ``"cpu"`` or ``"cuda"``.
        threads: ctranslate2 intra-op threads.
        pad_to_window: pad each input to 30 s before encoding (see module doc).
    """

    sample_rate = 16000
    frame_rate = 50.0

    def __init__(self, path: str, *, device: str = "cpu", threads: int = 2, pad_to_window: bool = True):
        try:
            import ctranslate2
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the Whisper teacher needs faster-whisper and ctranslate2: "
                              "pip install 'speechtok[train]'") from e
        self.path = str(path)
        try:
            self.model = ctranslate2.models.Whisper(self.path, device=device, intra_threads=threads)
        except Exception as e:  # noqa: BLE001 - ctranslate2 raises RuntimeError/ValueError
            raise ValueError(f"{self.path}: not a ctranslate2 Whisper model directory ({e})") from e
        self._ct2 = ctranslate2
        self.n_mels = int(self.model.n_mels)
        self.extractor = FeatureExtractor(feature_size=self.n_mels)
        self.pad_to_window = pad_to_window
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        return int(self._encode(np.zeros((1, self.n_mels, 2), np.float32)).shape[-1])

    def describe(self) -> dict:
        return {"kind": "whisper", "path": self.path, "dim": self.dim, "frame_rate": self.frame_rate,
                "pad_to_window": self.pad_to_window}

    def _encode(self, mel: np.ndarray) -> np.ndarray:
        out = self.model.encode(self._ct2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True)
        return np.asarray(out, dtype=np.float32)

    def _mel(self, wav: np.ndarray, frames: int) -> np.ndarray:
        """Log-mel ``[n_mels, frames]`` of ``wav`` (zero-padded or cut to ``frames``)."""
        m = self.extractor(wav, padding=0)
        out = np.zeros((self.n_mels, frames), np.float32)
        n = min(frames, m.shape[-1])
        out[:, :n] = m[:, :n]
        if n < frames and not self.pad_to_window:
            out[:, n:] = m[:, -1:] if m.shape[-1] else 0.0
        return out

    def encode_waveform(self, wav: np.ndarray) -> np.ndarray:
        """One mono 16 kHz waveform ``[S]`` -> encoder states ``[ceil(S / 320), D]``."""
        n_out = max(1, math.ceil(len(wav) / (2 * MEL_HOP)))
        if not self.pad_to_window:
            frames = 2 * n_out
            return self._encode(self._mel(wav, frames)[None])[0][:n_out]
        chunks = []
        for s in range(0, max(1, len(wav)), WINDOW_SAMPLES):
            piece = wav[s: s + WINDOW_SAMPLES]
            # padding the *waveform* to 30 s reproduces Whisper's own preprocessing
            padded = np.zeros(WINDOW_SAMPLES, np.float32)
            padded[: len(piece)] = piece
            states = self._encode(self._mel(padded, 3000)[None])[0]
            chunks.append(states[: math.ceil(len(piece) / (2 * MEL_HOP))])
        return np.concatenate(chunks, axis=0)[:n_out]

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, lengths: torch.Tensor, sample_rate: int,
                 ids: Optional[Sequence[str]] = None, offsets: Optional[torch.Tensor] = None) -> TeacherFeatures:
        """``audio`` ``[B, 1, S]`` at ``sample_rate`` -> encoder states ``[B, T, D]`` (50 Hz)."""
        x = audio.detach().float().mean(dim=1).cpu()
        lens = lengths.cpu()
        if sample_rate != self.sample_rate:
            import torchaudio.functional as AF

            x = AF.resample(x, sample_rate, self.sample_rate)
            lens = (lens * self.sample_rate + sample_rate - 1) // sample_rate
        wavs = [x[b, : int(lens[b])].numpy() for b in range(x.shape[0])]
        if self.pad_to_window and all(len(w) <= WINDOW_SAMPLES for w in wavs):
            # one batched call: every item fits one 30 s window
            mel = np.stack([self._mel(np.pad(w, (0, WINDOW_SAMPLES - len(w))), 3000) for w in wavs])
            states = self._encode(mel)
            outs = [states[b, : max(1, math.ceil(len(w) / (2 * MEL_HOP)))] for b, w in enumerate(wavs)]
        else:
            outs = [self.encode_waveform(w) for w in wavs]
        T = max(o.shape[0] for o in outs)
        feats = torch.zeros(len(outs), T, self.dim)
        for b, o in enumerate(outs):
            feats[b, : o.shape[0]] = torch.from_numpy(o)
        n = torch.tensor([o.shape[0] for o in outs], dtype=torch.long)
        return TeacherFeatures(feats, self.frame_rate, torch.zeros(len(outs), dtype=torch.float64), n)
