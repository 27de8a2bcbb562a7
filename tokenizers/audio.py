"""Audio I/O: read any soundfile-readable file (wav, flac, ogg, mp3, ...) to ``[C, S]`` float32,
resample with ``torchaudio.functional.resample``, write atomically.

Every error is an `AudioError` naming the file and the problem: unreadable or corrupt, empty,
NaN/inf samples, nothing left after silence trimming. A wrong sample rate is never an error: the
audio is resampled to the rate asked for.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .atomic import atomic_path

PathLike = Union[str, os.PathLike]
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64")


class AudioError(ValueError):
    """An audio file cannot be used; ``path`` and ``problem`` say which and why."""

    def __init__(self, path: PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@functools.lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int) -> torch.nn.Module:
    """A cached ``torchaudio.transforms.Resample`` (building its sinc kernel costs more than using it
    on a short file); its output equals ``torchaudio.functional.resample`` exactly."""
    import torchaudio.transforms as T

    return T.Resample(orig_rate, new_rate, dtype=torch.float32)


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample ``[..., S]`` audio (band-limited sinc, torchaudio's default)."""
    if int(orig_rate) == int(new_rate):
        return wav
    if wav.shape[-1] == 0:
        return wav.new_zeros(*wav.shape[:-1], 0)
    if wav.dtype == torch.float32 and wav.device.type == "cpu":
        return _resampler(int(orig_rate), int(new_rate))(wav)
    import torchaudio.functional as AF

    return AF.resample(wav, int(orig_rate), int(new_rate))


def trim_silence(wav: torch.Tensor, sample_rate: int, top_db: float = 40.0,
                 frame_ms: float = 20.0) -> torch.Tensor:
    """Cut leading/trailing frames quieter than ``top_db`` below the loudest frame. ``[C, S]`` in and out."""
    hop = max(1, int(sample_rate * frame_ms / 1000))
    mono = wav.abs().amax(dim=0)
    n = mono.shape[-1] // hop
    if n == 0:
        return wav if bool((mono > 0).any()) else wav[:, :0]
    rms = mono[: n * hop].reshape(n, hop).square().mean(dim=1).sqrt()
    ref = float(rms.max())
    if ref <= 0:
        return wav[:, :0]
    loud = (20 * torch.log10(rms.clamp_min(1e-12) / ref) > -top_db).nonzero().flatten()
    start, stop = int(loud[0]) * hop, min(wav.shape[-1], (int(loud[-1]) + 1) * hop)
    return wav[:, start:stop]


def load_audio(path: PathLike, sample_rate: Optional[int] = None, mono: bool = True,
               trim_db: Optional[float] = None) -> tuple[torch.Tensor, int]:
    """Read an audio file.

    Args:
        path: any format libsndfile reads (wav, flac, ogg/vorbis/opus, mp3, ...).
        sample_rate: resample to this rate (Hz); None keeps the file's rate.
        mono: average channels to one (``C = 1``); False keeps them.
        trim_db: if set, trim leading/trailing silence quieter than this many dB below the peak.

    Returns:
        ``(wav [C, S] float32, sample_rate)``.

    Raises:
        AudioError: missing, unreadable/corrupt, empty, NaN/inf samples, or empty after trimming.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioError(path, f"unreadable or corrupt audio ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(path, f"{bad} NaN/inf samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    if mono and wav.shape[0] > 1:
        wav = wav.mean(dim=0, keepdim=True)
    if trim_db is not None:
        wav = trim_silence(wav, sr, top_db=trim_db)
        if wav.shape[-1] == 0:
            raise AudioError(path, f"zero length after trimming silence (trim_db={trim_db})")
    if sample_rate is not None and int(sample_rate) != int(sr):
        wav = resample(wav, sr, int(sample_rate))
        sr = int(sample_rate)
    return wav.contiguous(), int(sr)


def save_audio(path: PathLike, wav: torch.Tensor, sample_rate: int, subtype: Optional[str] = None) -> Path:
    """Write ``[C, S]`` (or ``[S]``) float audio atomically; the format follows the extension.

    Samples are clipped to [-1, 1]. Returns the path written.
    """
    import soundfile as sf

    path = Path(path)
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise AudioError(path, f"save_audio takes [C, S] audio, got shape {tuple(wav.shape)}")
    data = wav.detach().float().cpu().clamp(-1, 1).numpy().T
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    if fmt == "OPUS":
        fmt, subtype = "OGG", "OPUS"
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data, int(sample_rate), format=fmt, subtype=subtype)
    return path


def is_audio_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS
