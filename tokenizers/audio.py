"""Audio I/O: read any soundfile-readable file (wav, flac, ogg, mp3, ...) to ``[C, S]`` float32,
resample with ``torchaudio.functional.resample``, write atomically.

Every error is an `AudioError` naming the file and the problem: unreadable or corrupt, empty,
NaN/inf samples, nothing left after silence trimming. A wrong sample rate is never an error: the
audio is resampled to the rate asked for.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

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


def _samples(path: PathLike, data: np.ndarray, mono: bool, where: str = "") -> torch.Tensor:
    """Samples ``[S, C]`` as soundfile reads them -> ``[C, S]`` float32 (averaged to one channel if
    ``mono``); NaN/inf samples are an `AudioError` (``where`` says which part of the file)."""
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(path, f"{bad} NaN/inf samples{where}")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    return wav.mean(dim=0, keepdim=True) if mono and wav.shape[0] > 1 else wav


def fit_channels(path: PathLike, wav: torch.Tensor, channels: int) -> torch.Tensor:
    """``[C, S]`` audio of ``path`` -> ``[channels, S]``: mono is repeated to every channel; any other
    mismatch is an `AudioError` (read with ``mono=channels == 1`` first, so a mono model always fits)."""
    if wav.shape[0] == channels:
        return wav
    if wav.shape[0] != 1:
        raise AudioError(path, f"{wav.shape[0]} channels; the model takes {channels}")
    return wav.expand(channels, -1)


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
    wav = _samples(path, data, mono)
    if trim_db is not None:
        wav = trim_silence(wav, sr, top_db=trim_db)
        if wav.shape[-1] == 0:
            raise AudioError(path, f"zero length after trimming silence (trim_db={trim_db})")
    if sample_rate is not None and int(sample_rate) != int(sr):
        wav = resample(wav, sr, int(sample_rate))
        sr = int(sample_rate)
    return wav.contiguous(), int(sr)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise AudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _unreadable(path: Path, e: Exception) -> AudioError:
    return AudioError(path, f"unreadable or corrupt audio ({type(e).__name__}: {e})")


def audio_info(path: PathLike) -> tuple[int, int, int]:
    """Describe an audio file without reading its samples.

    Returns:
        ``(frames, sample_rate, channels)``: length in samples per channel, rate in Hz, channel count.

    Raises:
        AudioError: missing, empty (0 bytes or 0 frames) or unreadable/corrupt.
    """
    import soundfile as sf

    path = Path(path)
    _check_file(path)
    try:
        with sf.SoundFile(str(path)) as f:
            frames, sr, channels = int(f.frames), int(f.samplerate), int(f.channels)
    except Exception as e:  # libsndfile raises LibsndfileError / RuntimeError / TypeError
        raise _unreadable(path, e) from e
    if frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    return frames, sr, channels


def iter_audio_blocks(path: PathLike, sample_rate: Optional[int] = None, mono: bool = True,
                      block_seconds: float = 30.0) -> Iterator[torch.Tensor]:
    """Read an audio file block by block, with memory bounded by the block rather than the file.

    Concatenated along the last axis, the blocks equal ``load_audio(path, sample_rate, mono)[0]``
    (resampling included) up to float rounding (~1e-6): when the rates differ, each block of input
    is resampled together with a margin of its neighbours wide enough to cover the sinc kernel.

    Args:
        path: any format libsndfile reads (wav, flac, ogg/vorbis/opus, mp3, ...).
        sample_rate: output rate (Hz); None keeps the file's rate.
        mono: average channels to one (``C = 1``); False keeps them.
        block_seconds: seconds of *input* read per block (rounded to the resampler's period, so a
            block is at least ``orig_rate / gcd(orig_rate, sample_rate)`` input samples).

    Yields:
        contiguous float32 CPU ``[C, n]`` blocks at ``sample_rate``; ``n`` is about
        ``block_seconds * sample_rate`` (the last block may be shorter).

    Raises:
        AudioError: missing, empty, unreadable/corrupt (raised by this call, before any block) or
        NaN/inf samples (raised when the block holding them is read).
    """
    path = Path(path)
    _, sr, _ = audio_info(path)  # fail fast, before the first next()
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
    new_sr = sr if sample_rate is None else int(sample_rate)
    return _iter_blocks(path, sr, new_sr, mono, float(block_seconds))


def _sequential_reader(f) -> Callable[[int], np.ndarray]:
    """``read(k) -> [k', C] float32`` from an open ``soundfile.SoundFile``, sequentially, stopping
    where ``sf.read`` would (``f.frames``, or EOF if sooner).

    ``SoundFile.read`` seeks back to its own position after every read; libsndfile's MP3 decoder
    takes that seek literally and drops its bit reservoir, so MP3 read in pieces that way glitches at
    every piece boundary (amplitude errors ~0.5 on some files). When soundfile's libsndfile binding
    is reachable, read with ``sf_readf_float`` directly (no seek); otherwise use ``f.read``.
    """
    import soundfile as sf

    snd, ffi, handle = getattr(sf, "_snd", None), getattr(sf, "_ffi", None), getattr(f, "_file", None)
    if snd is None or ffi is None or handle is None or not hasattr(snd, "sf_readf_float"):
        return lambda frames: f.read(frames, dtype="float32", always_2d=True)
    left = [int(f.frames) if f.seekable() else None]

    def read(frames: int) -> np.ndarray:
        if left[0] is not None:
            frames = min(frames, left[0])
        out = np.empty((max(frames, 0), f.channels), dtype=np.float32)
        if frames <= 0:
            return out
        got = int(snd.sf_readf_float(handle, ffi.cast("float *", ffi.from_buffer(out)), frames))
        err = int(snd.sf_error(handle))
        if err:
            raise sf.LibsndfileError(err)
        if left[0] is not None:
            left[0] -= got
        return out[:got]

    return read


def _iter_blocks(path: Path, sr: int, new_sr: int, mono: bool,
                 block_seconds: float) -> Iterator[torch.Tensor]:
    import soundfile as sf

    try:
        f = sf.SoundFile(str(path))
    except Exception as e:
        raise _unreadable(path, e) from e

    read_raw = _sequential_reader(f)

    def read(frames: int, at: int) -> torch.Tensor:
        """``[C', k]`` (C' = 1 if mono) float32, ``k <= frames`` (k < frames only at EOF)."""
        try:
            data = read_raw(frames)
        except Exception as e:
            raise _unreadable(path, e) from e
        return _samples(path, data, mono, f" (in the block from sample {at})")

    with f:
        if new_sr == sr:
            block = max(1, round(block_seconds * sr))
            pos = 0
            while True:
                wav = read(block, pos)
                if wav.shape[-1] == 0:
                    break
                pos += wav.shape[-1]
                yield wav.contiguous()
                if wav.shape[-1] < block:
                    break
            if pos == 0:
                raise AudioError(path, "empty audio (0 samples)")
            return

        # Resample [pos, pos + B) from the segment [pos - m, pos + B + m) (clipped to the file):
        # pos, B and m are multiples of o, so the segment's outputs line up with the whole file's, and
        # m covers the kernel's half-width, so the kept outputs see the same input as the whole file's.
        g = math.gcd(sr, new_sr)
        o, n = sr // g, new_sr // g
        width = math.ceil(6 * o / (min(o, n) * 0.99))  # torchaudio: lowpass_filter_width=6, rolloff=0.99
        m = o * (math.ceil(width / o) + 2)
        B = o * max(1, round(block_seconds * sr / o))
        buf = torch.zeros(1 if mono else f.channels, 0)  # input [buf_start, buf_start + buf width)
        buf_start, pos, eof = 0, 0, False
        while True:
            want = pos + B + m
            chunks = [buf]
            buf_end = buf_start + buf.shape[-1]
            while not eof and buf_end < want:
                wav = read(want - buf_end, buf_end)
                eof = wav.shape[-1] < want - buf_end
                chunks.append(wav)
                buf_end += wav.shape[-1]
            buf = torch.cat(chunks, dim=-1) if len(chunks) > 1 else buf
            if buf_end == 0:
                raise AudioError(path, "empty audio (0 samples)")
            seg_start = max(0, pos - m)
            out = resample(buf[:, seg_start - buf_start:], sr, new_sr)
            a = (pos - seg_start) // o * n
            if eof and pos + B >= buf_end:
                yield out[:, a:].contiguous()
                return
            yield out[:, a:a + B // o * n].contiguous()
            pos += B
            drop = max(0, pos - m) - buf_start
            buf, buf_start = buf[:, drop:], buf_start + drop


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
