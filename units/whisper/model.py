"""Whisper (Radford et al. 2022) as a plain PyTorch module, laid out like OpenAI's ``whisper/model.py``.

Parameter names are OpenAI's (``encoder.blocks.0.attn.query.weight``...), which is what
`speechtok.units.whisper.load` converts CTranslate2, Hugging Face and OpenAI checkpoints to.

Shapes: log-mel ``[B, n_mels, F]`` at 100 frames/s (10 ms hop), encoder states ``[B, T, D]`` at
50 frames/s with ``T = ceil(F / 2)`` (conv2 has stride 2), tokens ``[B, L]``, logits
``[B, L, n_vocab]``. Unlike OpenAI's encoder, `AudioEncoder` also takes inputs shorter than the
30 s window (``F < 2 * n_audio_ctx``: the positional embedding is sliced to ``T``), per-item
``lengths`` (a key mask, so a padded batch equals per-item runs) and returns any of its layers.

Layer convention (`speechtok.units.features.base.LAYER_CONVENTION`, HF ``hidden_states``):
layer 0 is the input of block 1 (convolutions + positional embedding), layer ``L`` the output of
block ``L``, and layer ``n_audio_layer`` is ``ln_post`` of the last block's output (OpenAI's encoder
output, HF's ``last_hidden_state``, CTranslate2's ``encode``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of a Whisper model (OpenAI's ``ModelDimensions``): ``n_audio_ctx`` encoder frames per
    30 s window (1500), ``n_audio_state`` its width D, ``n_text_ctx`` decoder positions (448)."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    def __post_init__(self):
        for k, v in self.__dict__.items():
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= (1 << 20):
                raise ValueError(f"WhisperDims.{k} must be an int in [1, {1 << 20}], got {v!r}")
        if self.n_audio_state % self.n_audio_head or self.n_text_state % self.n_text_head:
            raise ValueError(f"WhisperDims: state sizes {self.n_audio_state}/{self.n_text_state} are not "
                             f"divisible by the head counts {self.n_audio_head}/{self.n_text_head}")


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's encoder positional embedding ``[length, channels]``: sin then cos halves."""
    if channels % 2:
        raise ValueError(f"sinusoids: channels must be even, got {channels}")
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class MultiHeadAttention(nn.Module):
    """Attention with OpenAI's projections: ``query``/``value``/``out`` with bias, ``key`` without."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: Tensor, xa: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                causal: bool = False) -> Tensor:
        """``x [B, Lq, D]`` attends to itself, or to ``xa [B, Lk, D]``; ``mask``: bool ``[B, 1, 1, Lk]``
        (True = attend) or None; ``causal``: position i sees keys <= i. Returns ``[B, Lq, D]``."""
        src = x if xa is None else xa
        q, k, v = self.query(x), self.key(src), self.value(src)
        B, Lq, D = q.shape
        h = self.n_head

        def heads(t: Tensor) -> Tensor:
            return t.view(B, t.shape[1], h, D // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask, is_causal=causal)
        return self.out(out.transpose(1, 2).reshape(B, Lq, D))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention, MLP ``D -> 4D -> D`` (exact GELU)."""

    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        n_mlp = n_state * 4
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor, xa: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                causal: bool = False) -> Tensor:
        """``x [B, L, D]``; ``xa [B, T, D]`` audio states for cross-attention; ``mask`` as in
        `MultiHeadAttention` (on self-attention keys)."""
        x = x + self.attn(self.attn_ln(x), mask=mask, causal=causal)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), xa)
        return x + self.mlp(self.mlp_ln(x))


def encoder_lengths(mel_lengths: Tensor) -> Tensor:
    """Encoder frames of ``mel_lengths`` mel frames: ``ceil(F / 2)`` (conv2: kernel 3, stride 2, pad 1)."""
    return (mel_lengths + 1) // 2


class AudioEncoder(nn.Module):
    """Log-mel ``[B, n_mels, F]`` -> states ``[B, T, n_state]``, ``T = ceil(F / 2) <= n_ctx``.

    ``blocks`` may hold fewer than ``n_layer`` blocks (an extractor that reads a lower layer keeps
    only those; ``ln_post`` is then None): `forward` refuses layers it cannot compute.
    """

    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int,
                 keep_blocks: Optional[int] = None):
        super().__init__()
        keep = n_layer if keep_blocks is None else keep_blocks
        if not 0 <= keep <= n_layer:
            raise ValueError(f"AudioEncoder: keep_blocks {keep} outside [0, {n_layer}]")
        self.n_ctx, self.n_layer = n_ctx, n_layer
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head) for _ in range(keep)])
        self.ln_post = nn.LayerNorm(n_state) if keep == n_layer else None

    @property
    def max_layer(self) -> int:
        """The highest layer this encoder can return (``n_layer`` only with all blocks and ``ln_post``)."""
        return self.n_layer if self.ln_post is not None else len(self.blocks)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None,
                layers: Optional[Iterable[int]] = None) -> Union[Tensor, dict[int, Tensor]]:
        """``x [B, n_mels, F]`` log-mel; ``lengths [B]`` valid mel frames (None: all ``F``).

        With ``lengths``, mel frames and conv1 outputs past an item's end are zeroed (exactly the
        zero padding of a run on that item alone) and attention ignores keys past its
        `encoder_lengths`, so a padded batch equals per-item runs; states past an item's end are
        unspecified. ``layers``: None returns the output ``[B, T, D]`` (layer ``n_layer``); an
        iterable returns ``{layer: [B, T, D]}`` from one pass that stops after the highest one.
        """
        want = sorted({int(i) for i in layers}) if layers is not None else [self.n_layer]
        if not want or want[0] < 0 or want[-1] > self.max_layer:
            raise ValueError(f"encoder layers {want} outside [0, {self.max_layer}] (layer convention: "
                             f"0 = block input, {self.n_layer} = ln_post output)")
        n_frames = x.shape[-1]
        T = (n_frames + 1) // 2
        if T > self.n_ctx:
            raise ValueError(f"{n_frames} mel frames give {T} encoder frames, more than the {self.n_ctx} "
                             f"of one window")
        dtype = self.conv1.weight.dtype
        x = x.to(dtype)
        mask = None
        if lengths is not None:
            lengths = lengths.to(x.device)
            valid = torch.arange(n_frames, device=x.device)[None, :] < lengths[:, None]  # [B, F]
            x = x * valid[:, None, :].to(dtype)
            h = F.gelu(self.conv1(x)) * valid[:, None, :].to(dtype)
            n_out = encoder_lengths(lengths)
            keys = torch.arange(T, device=x.device)[None, :] < n_out[:, None]  # [B, T]
            keys = keys | (n_out == 0)[:, None]  # an empty item attends to everything (no NaN)
            mask = keys[:, None, None, :] if not bool(keys.all()) else None
        else:
            h = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(h)).permute(0, 2, 1)
        h = h + self.positional_embedding[:T].to(dtype)

        out = {}
        if 0 in want:
            out[0] = h
        for i, block in enumerate(self.blocks[: min(want[-1], len(self.blocks))], start=1):
            h = block(h, mask=mask)
            if i in want and i != self.n_layer:
                out[i] = h
        if self.n_layer in want:
            out[self.n_layer] = self.ln_post(h)
        return out[self.n_layer] if layers is None else out


class TextDecoder(nn.Module):
    """Tokens ``[B, L]`` + audio states ``[B, T, D]`` -> logits ``[B, L, n_vocab]`` (causal, no cache)."""

    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head, cross_attention=True)
                                     for _ in range(n_layer)])
        self.ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor, xa: Tensor) -> Tensor:
        """``x [B, L]`` token ids (``L <= n_ctx``), ``xa [B, T, D]`` encoder output -> logits float32."""
        L = x.shape[-1]
        if L > self.positional_embedding.shape[0]:
            raise ValueError(f"{L} tokens exceed the decoder's {self.positional_embedding.shape[0]} positions")
        h = self.token_embedding(x) + self.positional_embedding[:L]
        xa = xa.to(h.dtype)
        for block in self.blocks:
            h = block(h, xa, causal=True)
        h = self.ln(h)
        return (h @ self.token_embedding.weight.to(h.dtype).T).float()


class Whisper(nn.Module):
    """Encoder + decoder. ``keep_blocks`` < ``n_audio_layer`` builds a truncated encoder only
    (``decoder`` None), which is what a feature extractor reading a lower layer needs."""

    def __init__(self, dims: WhisperDims, keep_blocks: Optional[int] = None, with_decoder: bool = True):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                                    dims.n_audio_layer, keep_blocks)
        self.decoder = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head,
                                   dims.n_text_layer) if with_decoder else None

    def embed_audio(self, mel: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``mel [B, n_mels, F]`` -> encoder output ``[B, T, D]``."""
        return self.encoder(mel, lengths)

    def logits(self, tokens: Tensor, audio_features: Tensor) -> Tensor:
        """``tokens [B, L]``, ``audio_features [B, T, D]`` -> ``[B, L, n_vocab]``."""
        if self.decoder is None:
            raise ValueError("this Whisper model was built without its decoder")
        return self.decoder(tokens, audio_features)

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        return self.logits(tokens, self.embed_audio(mel))
