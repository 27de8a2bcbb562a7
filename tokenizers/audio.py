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
# common audio containers libsndfile cannot read (AAC/ALAC in MP4, WMA, WebM): named as unsupported
UNSUPPORTED_EXTENSIONS = (".m4a", ".m4b", ".mp4", ".aac", ".alac", ".wma", ".webm")


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
        if wav.shape[-1] > _resample_plan(int(orig_rate), int(new_rate))[2]:
            return _resample_long(wav, int(orig_rate), int(new_rate))  # = iter_audio_blocks, bitwise
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
    _check_file(path)
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
    """Exists, not empty, a format libsndfile reads, and (for WAV) holds all the samples its header promises."""
    if not path.is_file():
        raise AudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    if is_unsupported_audio(path):
        raise AudioError(path, f"unsupported audio format {path.suffix.lower()} (libsndfile reads no AAC/MP4/WMA): "
                               "convert it first, e.g. `ffmpeg -i IN.m4a OUT.flac`")
    missing = _wav_missing_frames(path)
    if missing:
        raise AudioError(path, f"truncated WAV: its header promises {missing[0]} sample frames, the file holds "
                               f"{missing[1]} (an incomplete copy or download?)")


def _wav_missing_frames(path: Path) -> Optional[tuple[int, int]]:
    """``(promised, present)`` sample frames of a RIFF/WAVE file whose ``data`` chunk runs past the end of
    the file; None if it is complete, streamed (size unknown: 0 or 0xFFFFFFFF) or not a RIFF WAV."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos, align = 12, 0
        for _ in range(1000):  # chunks before "data": fmt, fact, LIST, ... (a few)
            f.seek(pos)
            hdr = f.read(16)
            if len(hdr) < 8:
                return None
            cid, n = hdr[:4], int.from_bytes(hdr[4:8], "little")
            if cid == b"fmt " and len(hdr) >= 16:
                f.seek(pos + 20)
                align = int.from_bytes(f.read(2), "little")  # block align: bytes per sample frame
            if cid == b"data":
                present = size - (pos + 8)
                if n in (0, 0xFFFFFFFF) or n <= present or align <= 0:
                    return None
                return n // align, present // align
            pos += 8 + n + (n & 1)
    return None


def is_unsupported_audio(path: PathLike) -> bool:
    """True for audio containers libsndfile cannot read (`UNSUPPORTED_EXTENSIONS`: .m4a, .aac, ...)."""
    return Path(path).suffix.lower() in UNSUPPORTED_EXTENSIONS


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
    bitwise, resampling included: when the rates differ, both resample in the same fixed segments
    of input, each with a margin of its neighbours that covers the sinc kernel (`_resample_plan`).

    Args:
        path: any format libsndfile reads (wav, flac, ogg/vorbis/opus, mp3, ...).
        sample_rate: output rate (Hz); None keeps the file's rate.
        mono: average channels to one (``C = 1``); False keeps them.
        block_seconds: seconds of *input* per block (rounded to the resampler's period, so a
            block is at least ``orig_rate / gcd(orig_rate, sample_rate)`` input samples). When
            resampling, input is read a segment (`RESAMPLE_SEGMENT_SECONDS`) ahead.

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


# Long inputs are resampled in fixed segments of the input (`_resample_plan`), each together with
# a margin of its neighbours that covers the sinc kernel, zero-padded at the file's ends to one
# shape: every segment is the same conv1d call, so a file resampled whole (`resample`) and one
# read block by block (`iter_audio_blocks`) give bitwise the same samples, whatever the blocks.
RESAMPLE_SEGMENT_SECONDS = 10.0


def _resample_plan(sr: int, new_sr: int) -> tuple[int, int, int, int]:
    """``(o, n, seg, m)``: ``o`` input samples give ``n`` output samples (rates over their gcd);
    segments of ``seg`` input samples (a multiple of ``o``, about `RESAMPLE_SEGMENT_SECONDS`) are
    resampled with ``m`` samples (a multiple of ``o``, > kernel half-width + ``o``) on each side."""
    g = math.gcd(sr, new_sr)
    o, n = sr // g, new_sr // g
    width = int(_resampler(sr, new_sr).width)
    m = o * (math.ceil(width / o) + 2)
    seg = o * max(1, round(RESAMPLE_SEGMENT_SECONDS * sr / o))
    return o, n, seg, m


def _resampled_length(length: int, o: int, n: int) -> int:
    """Output samples torchaudio gives for ``length`` input samples (its own float32 rounding)."""
    return int(torch.ceil(torch.as_tensor(n * length / o)))


def _resample_segment(wav: torch.Tensor, lo: int, sr: int, new_sr: int) -> torch.Tensor:
    """``wav [..., k]`` is input ``[lo, lo + k)`` (clipped to the file) of the segment
    ``[pos - m, pos + seg + m)`` -> the ``seg / o * n`` outputs of ``[pos, pos + seg)``."""
    o, n, seg, m = _resample_plan(sr, new_sr)
    pos = lo + m
    left = max(0, -lo)
    right = seg + 2 * m - left - wav.shape[-1]
    piece = torch.nn.functional.pad(wav, (left, right)) if left or right else wav
    return _resampler(sr, new_sr)(piece)[..., m // o * n:(m + seg) // o * n]


def _resample_long(wav: torch.Tensor, sr: int, new_sr: int) -> torch.Tensor:
    """`resample` of a cpu float32 ``[..., L]`` input longer than one segment, segment by segment."""
    o, n, seg, m = _resample_plan(sr, new_sr)
    L = wav.shape[-1]
    outs = [_resample_segment(wav[..., max(0, pos - m):pos + seg + m], pos - m, sr, new_sr)
            for pos in range(0, L, seg)]
    return torch.cat(outs, dim=-1)[..., :_resampled_length(L, o, n)]


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
        o, n, _, _ = _resample_plan(sr, new_sr)
        out_block = n * max(1, round(block_seconds * sr / o))
        yield from rechunk(_resampled_segments(read, 1 if mono else f.channels, sr, new_sr, path), out_block)


def _resampled_segments(read, channels: int, sr: int, new_sr: int, path: Path) -> Iterator[torch.Tensor]:
    """Resampled output of a file read with ``read(k, at)``, segment by segment, exactly as
    `resample` computes it for the whole file (one call if the file fits in one segment)."""
    o, n, seg, m = _resample_plan(sr, new_sr)
    buf = torch.zeros(channels, 0)  # input [buf_start, buf_start + buf width)
    buf_start, pos, eof, done = 0, 0, False, 0
    while True:
        want = pos + seg + m
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
        if eof and pos == 0 and buf_end <= seg:
            yield resample(buf, sr, new_sr)  # what resample does with a short input
            return
        lo = max(0, pos - m)
        out = _resample_segment(buf[:, lo - buf_start:], pos - m, sr, new_sr)
        if eof and pos + seg >= buf_end:
            yield out[:, :_resampled_length(buf_end, o, n) - done]
            return
        done += out.shape[-1]
        yield out
        pos += seg
        drop = max(0, pos - m) - buf_start
        buf, buf_start = buf[:, drop:], buf_start + drop


def rechunk(parts: Iterator[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """``[C, *]`` pieces -> contiguous ``[C, size]`` blocks (the last one shorter, never empty)."""
    pending: list[torch.Tensor] = []
    have = 0
    for part in parts:
        pending.append(part)
        have += part.shape[-1]
        if have < size:
            continue
        joined = torch.cat(pending, dim=-1)
        cut = have // size * size
        for i in range(0, cut, size):
            yield joined[:, i:i + size].contiguous()
        pending, have = [joined[:, cut:]], have - cut
    if have:
        yield torch.cat(pending, dim=-1).contiguous()


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
    try:
        with atomic_path(path) as tmp:
            sf.write(str(tmp), data, int(sample_rate), format=fmt, subtype=subtype)
            if fmt in _LOSSLESS and sf.info(str(tmp)).frames != data.shape[0]:
                raise OSError(f"wrote {sf.info(str(tmp)).frames} of {data.shape[0]} sample frames")
    except (OSError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioError(path, f"cannot write ({_write_cause(path.parent, e)})") from e
    return path


_LOSSLESS = ("WAV", "FLAC", "AIFF", "W64", "AU")


def _write_cause(folder: Path, e: Exception) -> str:
    """A readable cause for a failed write (libsndfile says only "System error.")."""
    import errno
    import shutil

    if isinstance(e, OSError) and e.errno is not None:
        return f"{e.strerror} [{errno.errorcode.get(e.errno, e.errno)}]"
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
        if not os.access(folder, os.W_OK):
            return f"permission denied for {folder}"
        free = shutil.disk_usage(folder).free
        if free < (1 << 20):
            return f"no space left on device ({free} bytes free)"
    except OSError:
        pass
    return f"{type(e).__name__}: {e}"


def is_audio_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS
