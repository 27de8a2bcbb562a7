"""The one tokenizer interface: ``encode(wav) -> Codes`` and ``decode(Codes) -> Waveform``.

Audio axis order is ``[B, C, S]`` (batch, channel, sample); a ``[C, S]`` tensor is one item.
Tokenizers subclass `BaseTokenizer`, which normalizes inputs (batching, channel mixing,
resampling to the model rate, masking padding) so each model only sees ``[B, C, S]`` at its
own rate with ``lengths``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import torch

from .codes import Codes, CodesError


@dataclass(frozen=True, eq=False)
class Waveform:
    """Decoded (or loaded) audio.

    Attributes:
        audio: float32 ``[B, C, S]``, zero past ``lengths``.
        lengths: int64 ``[B]``, valid samples per item.
        sample_rate: Hz.
    """

    audio: torch.Tensor
    lengths: torch.Tensor
    sample_rate: int

    def unbatch(self) -> list[torch.Tensor]:
        """One ``[C, S_b]`` tensor per item, trimmed to its length."""
        return [self.audio[b, :, : int(n)] for b, n in enumerate(self.lengths)]


@runtime_checkable
class Tokenizer(Protocol):
    """What every speechtok tokenizer offers (see `BaseTokenizer`)."""

    sample_rate: int
    frame_rate: float
    codebook_sizes: tuple[int, ...]
    model_id: str

    def encode(self, wav: torch.Tensor, sample_rate: Optional[int] = None,
               lengths: Optional[torch.Tensor] = None) -> Codes: ...


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Bool ``[B, size]``: True where ``index < lengths[b]``."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def as_audio_tensor(wav) -> torch.Tensor:
    """A torch tensor as is; a numpy array converted (no copy unless it is read-only or strided)."""
    if isinstance(wav, torch.Tensor):
        return wav
    import numpy as np

    if not isinstance(wav, np.ndarray):
        raise TypeError(f"audio must be a torch.Tensor or numpy array, got {type(wav).__name__}")
    if not (np.issubdtype(wav.dtype, np.floating) and wav.dtype.itemsize >= 4):
        raise TypeError(f"audio must be float32/float64 samples, got a numpy array of {wav.dtype}")
    return torch.from_numpy(np.require(wav, requirements=["C", "W"]))


def check_sample_rate(sample_rate, what: str = "sample_rate") -> int:
    """``sample_rate`` as a positive int (Hz, at most `formats.MAX_SAMPLE_RATE`); ValueError otherwise."""
    import numbers

    from .formats import MAX_SAMPLE_RATE

    ok = isinstance(sample_rate, numbers.Real) and not isinstance(sample_rate, bool) and \
        math.isfinite(sample_rate) and float(sample_rate).is_integer()
    if not ok or not 1 <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"{what} must be an integer number of Hz in [1, {MAX_SAMPLE_RATE}], got {sample_rate!r}")
    return int(sample_rate)


def _check_lengths(lengths, B: int, S: int, device) -> torch.Tensor:
    """``lengths`` as int64 ``[B]`` in ``[0, S]``; ValueError otherwise (non-integer values included)."""
    if lengths is None:
        return torch.full((B,), S, dtype=torch.long, device=device)
    raw = torch.as_tensor(lengths, device=device)
    if raw.dtype == torch.bool or (raw.is_floating_point() and not bool((raw == raw.round()).all())) \
            or raw.is_complex():
        raise ValueError(f"lengths must be whole numbers of samples, got {raw.tolist()}")
    out = raw.long()
    if tuple(out.shape) != (B,) or (B and (int(out.max()) > S or int(out.min()) < 0)):
        raise ValueError(f"lengths must be [B]={B} values in [0, {S}], got {raw.tolist()}")
    return out


def prepare_audio(wav: torch.Tensor, sample_rate: int, target_rate: int, channels: int,
                  lengths: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize input audio for a model.

    Args:
        wav: ``[B, C, S]`` or ``[C, S]`` float tensor (or numpy array) at ``sample_rate``.
        lengths: ``[B]`` valid samples (None: all of ``S``).
        channels: the model's channel count; 1 mixes down, otherwise C must match or be 1.

    Returns:
        ``([B, channels, S'] float32 at target_rate with zeros past lengths, lengths' [B])``.

    Raises:
        TypeError/ValueError: not float audio, wrong dims, no channels, a bad sample rate or
        lengths, or NaN/inf samples within ``lengths`` (they would encode to valid-looking codes).
    """
    wav = as_audio_tensor(wav)
    sample_rate = check_sample_rate(sample_rate)
    if wav.dim() == 2:
        wav = wav[None]
    if wav.dim() != 3:
        raise ValueError(f"audio must be [B, C, S] or [C, S], got shape {tuple(wav.shape)}")
    if not wav.is_floating_point():
        raise TypeError(f"audio must be a float tensor, got {wav.dtype}")
    wav = wav.float()
    B, C, S = wav.shape
    if C == 0:
        raise ValueError(f"audio has no channels (shape {tuple(wav.shape)})")
    lengths = _check_lengths(lengths, B, S, wav.device)
    valid = length_mask(lengths, S)[:, None, :]
    bad = ~torch.isfinite(wav) & valid
    if bad.any():
        items = sorted({int(b) for b in bad.nonzero()[:, 0].unique()[:8]})
        raise ValueError(f"audio holds {int(bad.sum())} NaN/inf samples (items {items}): clean or drop them")
    wav = wav.masked_fill(~valid, 0.0)  # padding may hold anything, NaN included
    if C != channels:
        if channels == 1:
            wav = wav.mean(dim=1, keepdim=True)
        elif C == 1:
            wav = wav.expand(B, channels, S)
        else:
            raise ValueError(f"model takes {channels} channels, audio has {C}")
    if int(sample_rate) != int(target_rate):
        # per item, so a padded batch resamples exactly as each item alone would
        from .audio import resample

        new_lengths = (lengths * int(target_rate) + int(sample_rate) - 1) // int(sample_rate)
        out = wav.new_zeros(B, wav.shape[1], int(new_lengths.max()) if B else 0)
        for b in range(B):
            n = int(lengths[b])
            if n:
                y = resample(wav[b, :, :n], int(sample_rate), int(target_rate))
                m = min(y.shape[-1], int(new_lengths[b]))
                out[b, :, :m] = y[:, :m]
                new_lengths[b] = m
            else:
                new_lengths[b] = 0
        wav, lengths = out, new_lengths
    return wav.contiguous(), lengths


def check_codes_fit(tok, codes: Codes, codebook_sizes: Optional[tuple[int, ...]] = None) -> None:
    """Raise `CodesError` unless ``codes`` have the rates and codebooks of ``tok`` (besides its id:
    a file edited by hand, or made by a model that shares an id, must not decode at the wrong speed)."""
    problems = []
    if abs(float(codes.frame_rate) - float(tok.frame_rate)) > 1e-6 * float(tok.frame_rate):
        problems.append(f"frame rate {codes.frame_rate} Hz, the model's is {tok.frame_rate} Hz")
    if int(codes.sample_rate) != int(tok.sample_rate):
        problems.append(f"sample rate {codes.sample_rate} Hz, the model's is {tok.sample_rate} Hz")
    sizes = tuple(codes.codebook_sizes)
    model_sizes = tuple(tok.codebook_sizes if codebook_sizes is None else codebook_sizes)
    if len(sizes) > len(model_sizes) or sizes != model_sizes[: len(sizes)]:
        problems.append(f"codebook sizes {list(sizes)}, the model's are {list(model_sizes)}")
    if problems:
        raise CodesError(f"codes do not fit model {tok.model_id}: " + "; ".join(problems))


class BaseTokenizer(torch.nn.Module):
    """Common plumbing for tokenizers.

    Subclasses set ``sample_rate``, ``channels``, ``frame_rate``, ``codebook_sizes``, ``name``,
    ``n_semantic`` and implement `_encode` (and `_decode` if they can synthesize audio).
    ``model_id`` is ``"name@<12 hex>"``: the weights' sha256, combined with `identity_config` (the
    configuration, which changes codes and audio as much as the weights do) where there is one.
    """

    sample_rate: int
    channels: int = 1
    frame_rate: float
    codebook_sizes: tuple[int, ...]
    n_semantic: int = 0
    name: str = "tokenizer"
    weights_hash: str = "noweights"
    accepts_durations: bool = False  # True: `_decode` uses Codes.durations itself (else they are expanded)

    def identity_config(self) -> Optional[dict]:
        """What besides the weights changes this model's codes or audio (a JSON-able config), or None."""
        return None

    @property
    def model_id(self) -> str:
        cfg = self.identity_config()
        if cfg is None:
            return f"{self.name}@{self.weights_hash[:12]}"
        blob = self.weights_hash + "\n" + json.dumps(cfg, sort_keys=True, separators=(",", ":"))
        return f"{self.name}@{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def bitrate(self, num_codebooks: Optional[int] = None) -> float:
        """Nominal bits/s using the first ``num_codebooks`` codebooks (all by default)."""
        import math

        sizes = self.codebook_sizes[: num_codebooks or len(self.codebook_sizes)]
        return self.frame_rate * sum(math.log2(s) for s in sizes)

    # ----------------------------------------------------------------- public API
    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, sample_rate: Optional[int] = None,
               lengths: Optional[torch.Tensor] = None, num_codebooks: Optional[int] = None) -> Codes:
        """Audio ``[B, C, S]`` (or ``[C, S]``) at ``sample_rate`` (default: the model's) -> `Codes`.

        ``lengths`` ``[B]`` gives valid samples of a zero-padded batch; results equal per-item ones.
        ``num_codebooks`` keeps the first k codebooks (lower bitrate).
        """
        sr = self.sample_rate if sample_rate is None else sample_rate  # checked by prepare_audio
        k = num_codebooks
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_codebooks):
            raise ValueError(f"num_codebooks must be an integer in [1, {self.num_codebooks}], got {k!r}")
        wav = as_audio_tensor(wav).to(self.device)
        wav, lengths = prepare_audio(wav, sr, self.sample_rate, self.channels, lengths)
        codes = self._encode(wav, lengths)
        if num_codebooks is not None:
            codes = codes.take_codebooks(num_codebooks)
        return codes

    @torch.inference_mode()
    def decode(self, codes: Codes) -> Waveform:
        """`Codes` -> `Waveform` ``[B, C, S]`` at ``sample_rate`` with per-item lengths.

        Fails loudly when the codes come from another model.
        """
        codes.check_model(self.model_id)
        check_codes_fit(self, codes)
        codes.validate()
        if codes.durations is not None and not self.accepts_durations:
            codes = codes.expand()
        return self._decode(codes.to(self.device))

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> Codes:
        raise NotImplementedError

    def _decode(self, codes: Codes) -> Waveform:
        raise NotImplementedError(f"{type(self).__name__} has no decoder")

    @property
    def can_decode(self) -> bool:
        return type(self)._decode is not BaseTokenizer._decode

    def make_codes(self, codes: torch.Tensor, lengths: torch.Tensor, **extra) -> Codes:
        """Wrap model output ``[B, K, T]`` into `Codes` with this tokenizer's metadata."""
        return Codes.from_tensor(
            codes, lengths, frame_rate=float(self.frame_rate), codebook_sizes=tuple(self.codebook_sizes),
            sample_rate=int(self.sample_rate), model_id=self.model_id, n_semantic=int(self.n_semantic), **extra)
