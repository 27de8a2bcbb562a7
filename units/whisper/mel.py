"""Whisper's log-mel spectrogram in torch (OpenAI ``whisper/audio.py``, faster-whisper's FeatureExtractor).

Audio at 16 kHz; STFT ``n_fft`` 400 (25 ms), hop 160 (10 ms), periodic Hann window, centred frames
(``center=True``, reflect padding of 200 samples each side), power spectrum with the last STFT frame
dropped, Slaney-style mel filters (``n_mels`` 80 or 128, 0-8 kHz, area-normalised), then
``log10(max(mel, 1e-10))``, the dynamic-range clamp ``max(x, x.max() - 8)`` and ``(x + 4) / 4``.

Mel frame ``j`` is centred at sample ``160 j``. A window of ``n`` samples has ``ceil(n / 160)`` valid
frames (those centred inside it). The clamp's max is taken per window (one 30 s window, or the
shorter last window of a file) over that window's frames only: see `window_log_mel`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window


@lru_cache(maxsize=4)
def _filters(n_mels: int) -> Tensor:
    import torchaudio.functional as AF

    fb = AF.melscale_fbanks(n_freqs=N_FFT // 2 + 1, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=n_mels,
                            sample_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return fb.T.contiguous().float()  # [n_mels, 201]


def mel_filters(n_mels: int, device=None) -> Tensor:
    """Slaney mel filterbank ``[n_mels, 201]`` (librosa ``filters.mel(sr=16000, n_fft=400, n_mels)``)."""
    if not 1 <= int(n_mels) <= 512:
        raise ValueError(f"n_mels must be in [1, 512], got {n_mels}")
    return _filters(int(n_mels)).to(device)


def _power_mel(audio: Tensor, n_mels: int, pad_mode: str = "reflect", drop_last: bool = True) -> Tensor:
    """``audio [B, S]`` -> mel power ``[B, n_mels, S // 160]`` (last STFT frame dropped, as Whisper;
    ``S // 160 + 1`` frames with ``drop_last=False``)."""
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio.float(), N_FFT, HOP_LENGTH, window=window, center=True, pad_mode=pad_mode,
                      return_complex=True)
    magnitudes = (stft[..., :-1] if drop_last else stft).abs() ** 2
    return mel_filters(n_mels, audio.device) @ magnitudes


def _log_clamp(mel: Tensor, n_valid: Optional[int] = None) -> Tensor:
    """``mel [B, n_mels, F]`` power -> Whisper log-mel; the max is per item over its first
    ``n_valid`` frames (all when None)."""
    log_spec = torch.clamp(mel, min=1e-10).log10()
    ref = log_spec if n_valid is None else log_spec[..., :n_valid]
    peak = ref.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


def log_mel_spectrogram(audio: Tensor, n_mels: int = 80, padding: int = 0) -> Tensor:
    """OpenAI's ``log_mel_spectrogram``: ``audio [S]`` or ``[B, S]`` with ``padding`` zeros appended ->
    ``[..., n_mels, (S + padding) // 160]``; the clamp's max is over all those frames of each item."""
    squeeze = audio.dim() == 1
    x = audio[None] if squeeze else audio
    if padding:
        x = torch.nn.functional.pad(x, (0, padding))
    out = _log_clamp(_power_mel(x, n_mels))
    return out[0] if squeeze else out


def num_mel_frames(num_samples: Tensor) -> Tensor:
    """Valid mel frames of windows of ``num_samples`` samples: ``ceil(n / 160)`` (frames centred inside)."""
    return (num_samples + HOP_LENGTH - 1) // HOP_LENGTH


def window_log_mel(audio: Tensor, lengths: Tensor, n_mels: int = 80,
                   pad_to_window: bool = True) -> tuple[Tensor, Tensor]:
    """Log-mel of a batch of windows: ``audio [B, S]`` (``S <= 480000``, zero past ``lengths [B]``).

    Returns (``mel [B, n_mels, F]``, ``mel_lengths [B]`` = ``ceil(n / 160)`` valid frames).

    - ``pad_to_window=True`` (Whisper's training condition, what ``whisper.transcribe`` and
      faster-whisper feed a 30 s segment): each window is zero-padded to 480000 samples; ``F`` =
      3000 and every frame is the encoder's input (frames past the audio are the padding's). The max
      is over those 3000 frames (padding frames sit at the floor, so this is the max over the audio).
    - ``pad_to_window=False``: each window is analysed alone (reflect padding at its own end; windows
      of at most 200 samples use zero padding, as reflection needs more); ``F = max(mel_lengths)``,
      zeros past each item's frames, and the max is over the item's valid frames only.

    Either way an item's result does not depend on the rest of the batch.
    """
    if audio.dim() != 2 or tuple(lengths.shape) != (audio.shape[0],):
        raise ValueError(f"window_log_mel: audio must be [B, S] with lengths [B], got {tuple(audio.shape)} "
                         f"and {tuple(lengths.shape)}")
    if audio.shape[1] > N_SAMPLES:
        raise ValueError(f"window_log_mel: windows hold at most {N_SAMPLES} samples, got {audio.shape[1]}")
    B = audio.shape[0]
    lengths = lengths.to(torch.long).cpu()
    mel_lengths = num_mel_frames(lengths)
    if pad_to_window:
        x = audio.float()
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        x = torch.nn.functional.pad(x * valid, (0, N_SAMPLES - x.shape[1]))
        return _log_clamp(_power_mel(x, n_mels)), mel_lengths
    F = int(mel_lengths.max()) if B else 0
    out = audio.new_zeros(B, n_mels, F, dtype=torch.float32)
    for n in sorted(set(lengths.tolist())):  # items of equal length share one STFT call
        if n == 0:
            continue
        idx = (lengths == n).nonzero()[:, 0]
        x = audio[idx.to(audio.device), :n].float()
        pad_mode = "reflect" if n > N_FFT // 2 else "constant"
        frames = int(num_mel_frames(torch.tensor(n)))
        # the STFT of n samples has n // 160 + 1 centred frames: the first ceil(n / 160) are centred inside
        mel = _power_mel(x, n_mels, pad_mode, drop_last=False)[..., :frames]
        out[idx.to(out.device), :, :frames] = _log_clamp(mel)
    return out, mel_lengths

