"""`CodecStream`: an explicit streaming session over a `CodecModel` (moshi's streaming, minus the ambient mode).

    with tok.stream(batch_size=2) as s:
        for chunk in chunks:                  # [B, C, n] audio, any n >= 0
            codes = s.encode(chunk)           # int64 [B, K, t]: the frames completed so far
            audio = s.decode(codes)           # float [B, C, t * hop]
        codes = s.flush()                     # the last, zero-padded partial frame (if any)

Exactness: the model runs only on whole frames (partial frames wait in the session), every
module carries its left context, so the streamed codes are, in exact arithmetic, those of
offline encoding of the concatenated audio zero-padded to a whole number of frames. In float32
the calls have other matrix shapes than offline windows, so values differ by rounding (~1e-7
relative): codes agree except at near-ties of the nearest-code search
(`CodecTokenizer.code_margins`; measured by benchmarks/exactness.py), and the decoded audio is
the offline decode within ~1e-6.

Items restart independently with ``reset(mask)`` at a frame boundary (no partial frame pending).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

import torch

from .model import DecoderState, EncoderState

if TYPE_CHECKING:
    from speechtok.codes import Codes

    from .model import CodecModel


class CodecStream:
    """A streaming encode/decode session for ``batch_size`` parallel streams.

    Args:
        model: the codec.
        batch_size: number of parallel streams B.
        n_q: codebooks to emit (default: all).
        window_frames: most frames run through the model at once (default: the config's); a
            long chunk is processed window by window, so memory is bounded for any chunk size.
        aligned: run the model only on whole windows counted from the stream's start (frames
            wait until their window is complete; `flush` runs the last, shorter one). Every model
            call then has the input and shape of the offline encoding's windows, so the codes are
            the offline codes bitwise for any chunking, at up to ``window_frames - 1`` frames of
            extra latency (none with ``window_frames=1``, whose offline encoding is the same).
            Not aligned (the default), each chunk's frames are emitted at once and codes equal
            offline codes except at near-ties (`CodecTokenizer.code_margins`).
    """

    def __init__(self, model: "CodecModel", batch_size: int, n_q: Optional[int] = None,
                 window_frames: Optional[int] = None, aligned: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.n_q = n_q
        self.hop = model.hop_length
        self.window = int(window_frames or model.cfg.window_frames)
        self.aligned = bool(aligned)
        self.channels = model.cfg.channels
        self._device = next(model.parameters()).device
        self._enc: Optional[EncoderState] = None
        self._dec: Optional[DecoderState] = None
        self._pending = torch.zeros(batch_size, self.channels, 0, device=self._device)
        self._closed = False
        self.samples_in = 0
        self.frames_out = 0

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "CodecStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop all state; the session can no longer be used."""
        self._enc = self._dec = None
        self._pending = self._pending[..., :0]
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this stream is closed (flushed or exited); open a new one with tok.stream()")

    @property
    def pending_samples(self) -> int:
        """Samples buffered that do not complete a frame yet."""
        return int(self._pending.shape[-1])

    # ------------------------------------------------------------------ encode
    def _as_batch(self, chunk: torch.Tensor) -> torch.Tensor:
        if chunk.dim() == 2 and self.batch_size == 1:
            chunk = chunk[None]
        if chunk.dim() != 3 or chunk.shape[0] != self.batch_size or chunk.shape[1] != self.channels:
            raise ValueError(f"stream chunk must be [B={self.batch_size}, C={self.channels}, n], "
                             f"got shape {tuple(chunk.shape)}")
        if not chunk.is_floating_point():
            raise TypeError(f"audio must be float, got {chunk.dtype}")
        return chunk.to(self._device, torch.float32)

    @torch.inference_mode()
    def encode(self, chunk: torch.Tensor, margins: bool = False):
        """Audio ``[B, C, n]`` (any ``n >= 0``, model rate) -> codes int64 ``[B, K, t]`` of the frames
        completed by this chunk (``t`` may be 0); with ``margins`` the pair ``(codes, margins)``
        (`CodecModel.encode`), from the same model calls."""
        self._check_open()
        chunk = self._as_batch(chunk)
        self.samples_in += chunk.shape[-1]
        buf = torch.cat([self._pending, chunk], dim=-1) if self._pending.shape[-1] else chunk
        unit = self.hop * (self.window if self.aligned else 1)
        whole = buf.shape[-1] // unit * unit
        self._pending = buf[..., whole:].clone()
        return self._encode_frames(buf[..., :whole], margins)

    def _encode_frames(self, audio: torch.Tensor, margins: bool = False):
        """Whole frames ``[B, C, t * hop]`` -> codes (and margins), ``window_frames`` at a time
        (bounded memory)."""
        if self._enc is None:
            self._enc = self.model.init_encoder_state(self.batch_size)
        step = self.window * self.hop
        parts = [self.model.encode(audio[..., i:i + step], self._enc, self.n_q, margins=margins)
                 for i in range(0, audio.shape[-1], step)]
        if not parts:
            K = self.n_q or self.model.cfg.quantizer.n_q
            codes = torch.zeros(self.batch_size, K, 0, dtype=torch.long, device=self._device)
            parts = [(codes, codes.float()) if margins else codes]
        if margins:
            codes, gaps = (torch.cat(t, dim=-1) if len(t) > 1 else t[0] for t in zip(*parts))
        else:
            codes = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        self.frames_out += codes.shape[-1]
        return (codes, gaps) if margins else codes

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """End the stream: zero-pad the pending partial frame and return the codes of what was
        pending ``[B, K, t]`` (``t <= 1``; aligned: ``t < window_frames + 1``). The session is closed afterwards."""
        self._check_open()
        n = self._pending.shape[-1]
        if n:
            pad = torch.zeros(self.batch_size, self.channels, -n % self.hop, device=self._device)
            codes = self._encode_frames(torch.cat([self._pending, pad], dim=-1))
        else:
            K = self.n_q or self.model.cfg.quantizer.n_q
            codes = torch.zeros(self.batch_size, K, 0, dtype=torch.long, device=self._device)
        self.close()
        return codes

    # ------------------------------------------------------------------ decode
    @torch.inference_mode()
    def decode(self, codes: Union[torch.Tensor, "Codes"]) -> torch.Tensor:
        """Codes int64 ``[B, k, t]`` (or a `Codes` without padding) -> audio ``[B, C, t * hop]``."""
        self._check_open()
        if not isinstance(codes, torch.Tensor):
            codes = codes.codes
        if codes.dim() != 3 or codes.shape[0] != self.batch_size:
            raise ValueError(f"stream codes must be [B={self.batch_size}, K, t], got shape {tuple(codes.shape)}")
        if self._dec is None:
            self._dec = self.model.init_decoder_state(self.batch_size)
        codes = codes.to(self._device).clamp(min=0)
        parts = [self.model.decode(codes[..., i:i + self.window], self._dec)
                 for i in range(0, codes.shape[-1], self.window)]
        if not parts:
            return torch.zeros(self.batch_size, self.channels, 0, device=self._device)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    # ------------------------------------------------------------------ reset
    @torch.inference_mode()
    def reset(self, mask: Union[torch.Tensor, list]) -> None:
        """Restart the streams where ``mask`` (bool ``[B]``) is True, as if newly opened.

        Only possible at a frame boundary (no pending partial frame), where all streams are
        aligned; otherwise a ValueError names the pending samples.
        """
        self._check_open()
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self._device)
        if tuple(mask.shape) != (self.batch_size,):
            raise ValueError(f"reset mask must be [B={self.batch_size}] bool, got shape {tuple(mask.shape)}")
        if self._pending.shape[-1]:
            unit = f"window ({self.window} frames of {self.hop})" if self.aligned else f"frame (hop={self.hop})"
            raise ValueError(f"reset needs a {'window' if self.aligned else 'frame'} boundary but "
                             f"{self._pending.shape[-1]} samples are pending; feed chunks that complete the {unit} first")
        if self._enc is not None:
            self._enc.reset(mask)
        if self._dec is not None:
            self._dec.reset(mask)
