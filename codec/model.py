"""`CodecModel`: the streaming causal codec (Mimi architecture) as one ``nn.Module``.

    encode:  audio [B, C, S] -> encoder (SEANet) -> encoder_transformer -> downsample
             -> quantizer -> codes [B, K, T]                       (T = S / hop)
    decode:  codes -> quantizer.decode -> upsample -> decoder_transformer -> decoder -> [B, C, T * hop]

Every stage is causal and takes an optional streaming state (`EncoderState`/`DecoderState`);
without one it runs on a fresh state, so offline is the single-chunk case of streaming. Inputs
whose length is not a multiple of the hop leave their trailing samples in the state (streaming)
or are dropped (fresh state): pad to a multiple of the hop first (`CodecTokenizer` does).
"""
from __future__ import annotations

from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .config import CodecConfig
from .modules.resample import ConvDownsample, ConvUpsample
from .modules.seanet import SEANetDecoder, SEANetEncoder, SeqState
from .modules.conv import ConvState, ConvTransposeState
from .modules.transformer import StreamingTransformer, TransformerState


@dataclass
class EncoderState:
    """Streaming state of the encoder path (SEANet convs, transformer KV cache, downsample)."""

    seanet: SeqState
    transformer: TransformerState
    downsample: Optional[ConvState]

    def reset(self, mask: torch.Tensor) -> None:
        self.seanet.reset(mask)
        self.transformer.reset(mask)
        if self.downsample is not None:
            self.downsample.reset(mask)


@dataclass
class DecoderState:
    """Streaming state of the decoder path (upsample overlap, transformer KV cache, SEANet convs)."""

    upsample: Optional[ConvTransposeState]
    transformer: TransformerState
    seanet: SeqState

    def reset(self, mask: torch.Tensor) -> None:
        if self.upsample is not None:
            self.upsample.reset(mask)
        self.transformer.reset(mask)
        self.seanet.reset(mask)


@dataclass
class CodecOutput:
    """What `CodecModel.forward` returns (moshi's ``QuantizedResult`` plus the reconstruction).

    Attributes:
        x: reconstruction ``[B, C, T * hop]``.
        codes: int64 ``[B, K, T]``.
        penalty: scalar quantizer loss to add to the training loss.
        metrics: quantizer metrics (0-dim tensors).
        semantic: the semantic codebooks' quantized latent ``[B, D, T]`` (for distillation), or None.
        latent: the unquantized encoder latent ``[B, D, T]``.
        mask: bool ``[B, T]`` valid frames.
    """

    x: torch.Tensor
    codes: torch.Tensor
    penalty: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    semantic: Optional[torch.Tensor] = None
    latent: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None


class CodecModel(nn.Module):
    """Mimi-style codec. Submodule names: ``encoder``, ``encoder_transformer``, ``downsample``,
    ``quantizer``, ``upsample``, ``decoder_transformer``, ``decoder`` (HF ``MimiModel`` names)."""

    def __init__(self, cfg: CodecConfig, quantizer: nn.Module, decoder: bool = True):
        super().__init__()
        self.cfg = cfg
        D = cfg.seanet.dimension
        self.has_decoder = decoder
        # Without the decoder (encode-only use) its modules exist on the meta device: names, shapes
        # and dtypes without memory, so state-dict names and the weights hash stay those of the model.
        meta = torch.device("meta")
        self.encoder = SEANetEncoder(cfg.seanet)
        self.encoder_transformer = StreamingTransformer(cfg.transformer)
        with meta if not decoder else _nullcontext():
            self.decoder_transformer = StreamingTransformer(cfg.transformer)
            self.decoder = SEANetDecoder(cfg.seanet)
        if cfg.frame_stride > 1:
            self.downsample = ConvDownsample(D, cfg.frame_stride)
            with meta if not decoder else _nullcontext():
                self.upsample = ConvUpsample(D, cfg.frame_stride, cfg.upsample_groups)
        else:
            self.downsample = self.upsample = None
        self.quantizer = quantizer

    def _need_decoder(self) -> None:
        if not self.has_decoder:
            raise RuntimeError("this codec was loaded for encoding only (encoder_only=True): its decoder weights "
                               "were not read; load it again without encoder_only to decode")

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    # ------------------------------------------------------------------ states
    def init_encoder_state(self, batch_size: int) -> EncoderState:
        dev = next(self.parameters()).device
        return EncoderState(
            seanet=self.encoder.init_state(batch_size, dev),
            transformer=self.encoder_transformer.init_state(batch_size, dev),
            downsample=None if self.downsample is None else self.downsample.init_state(batch_size, dev))

    def init_decoder_state(self, batch_size: int) -> DecoderState:
        self._need_decoder()
        dev = next(self.parameters()).device
        return DecoderState(
            upsample=None if self.upsample is None else self.upsample.init_state(batch_size, dev),
            transformer=self.decoder_transformer.init_state(batch_size, dev),
            seanet=self.decoder.init_state(batch_size, dev))

    # ------------------------------------------------------------------ halves
    def encode_latent(self, x: torch.Tensor, state: Optional[EncoderState] = None) -> torch.Tensor:
        """Audio ``[B, C, S]`` -> unquantized latent ``[B, D, frames completed]``."""
        if x.dim() != 3 or x.shape[1] != self.cfg.channels:
            raise ValueError(f"expected audio [B, {self.cfg.channels}, S], got shape {tuple(x.shape)}")
        h = self.encoder(x, None if state is None else state.seanet)
        h = self.encoder_transformer(h.transpose(1, 2), None if state is None else state.transformer).transpose(1, 2)
        if self.downsample is not None:
            h = self.downsample(h, None if state is None else state.downsample)
        return h

    def decode_latent(self, z: torch.Tensor, state: Optional[DecoderState] = None) -> torch.Tensor:
        """Latent ``[B, D, T]`` -> audio ``[B, C, T * hop]``."""
        self._need_decoder()
        if self.upsample is not None:
            z = self.upsample(z, None if state is None else state.upsample)
        z = self.decoder_transformer(z.transpose(1, 2), None if state is None else state.transformer).transpose(1, 2)
        return self.decoder(z, None if state is None else state.seanet)

    def encode(self, x: torch.Tensor, state: Optional[EncoderState] = None,
               n_q: Optional[int] = None, margins: bool = False):
        """Audio ``[B, C, S]`` -> codes int64 ``[B, K, frames completed]``; with ``margins`` the pair
        ``(codes, margins)``, margins float ``[B, K, frames]``: how near each nearest-code choice
        was to a tie (`kmeans.code_margins`)."""
        z = self.encode_latent(x, state)
        if z.shape[-1] == 0:
            K = n_q or self.cfg.quantizer.n_q
            codes = torch.zeros(z.shape[0], K, 0, dtype=torch.long, device=z.device)
            return (codes, codes.float()) if margins else codes
        codes = self.quantizer.encode(z, None, n_q)
        return (codes, self.quantizer.code_margins(z, codes)) if margins else codes

    def decode(self, codes: torch.Tensor, state: Optional[DecoderState] = None) -> torch.Tensor:
        """Codes ``[B, k, T]`` (``k <= K``, no -1) -> audio ``[B, C, T * hop]``."""
        self._need_decoder()
        if codes.dim() != 3:
            raise ValueError(f"expected codes [B, K, T], got shape {tuple(codes.shape)}")
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], self.cfg.channels, 0, device=codes.device)
        return self.decode_latent(self.quantizer.decode(codes), state)

    # ------------------------------------------------------------------ training
    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                n_q: Optional[int] = None) -> CodecOutput:
        """Audio ``[B, C, S]`` (``S`` a multiple of the hop; ``lengths`` ``[B]`` valid samples)
        -> `CodecOutput` with the reconstruction ``[B, C, S]``."""
        B, _, S = x.shape
        hop = self.hop_length
        if S % hop:
            raise ValueError(f"training input length {S} must be a multiple of the hop {hop} (pad it)")
        z = self.encode_latent(x)
        T = z.shape[-1]
        mask = None
        if lengths is not None:
            n = (lengths.to(z.device) + hop - 1) // hop
            mask = torch.arange(T, device=z.device)[None] < n[:, None]
        q = self.quantizer(z, mask, n_q)
        y = self.decode_latent(q.x)
        return CodecOutput(x=y, codes=q.codes, penalty=q.penalty, metrics=q.metrics,
                           semantic=getattr(q, "semantic", None), latent=z, mask=mask)
