"""Causal streaming transformer: RoPE, layer scale, bounded attention window, KV cache.

Numerically the HF ``MimiTransformerModel`` (pre-norm LayerNorm blocks, exact GELU MLP without
bias, attention without bias, ``rotate_half`` RoPE, sliding window ``context``: a query at
position ``p`` sees keys at positions ``p - context < q <= p``). Weight names: ``layers.{i}.``
``self_attn.in_proj.weight`` ``[3D, D]`` (HF ``q_proj``/``k_proj``/``v_proj`` stacked),
``self_attn.out_proj.weight`` (HF ``o_proj``), ``input_layernorm``, ``post_attention_layernorm``,
``mlp.fc1``/``mlp.fc2``, ``self_attn_layer_scale.scale``, ``mlp_layer_scale.scale``.

Streaming state (`TransformerState`): per-item positions and a bounded KV cache holding the last
``context - 1`` keys/values of every layer, so memory is constant with duration. Items can be
restarted independently (``reset(mask)``): their cached keys become invalid and positions restart at 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TransformerConfig


@dataclass
class TransformerState:
    """Attributes:
        offset: int64 ``[B]`` position of the next frame of each item.
        key_pos: int64 ``[B, L]`` position of each cached key (-1: empty), ``L <= context - 1``.
        keys, values: per layer ``[B, H, capacity, head_dim]`` buffers; the cached keys/values are
            ``[:, :, start:start + L]``, in time order. New frames are written after them, so a
            step copies nothing but its own keys (the cache is compacted to the front only when
            the buffer's end is reached, every ``capacity - L`` frames).
        start: where the cached entries begin in the buffers.
    """

    offset: torch.Tensor
    key_pos: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    start: int = 0

    @property
    def cached(self) -> int:
        """Number of cached frames ``L``."""
        return self.key_pos.shape[1]

    def make_room(self, frames: int, slack: int = 64) -> None:
        """Ensure ``frames`` new entries fit after the cached ones: move the cache to the front of
        the buffers (growing them to ``L + max(frames, slack)`` when needed)."""
        L, cap = self.cached, self.keys[0].shape[2]
        if self.start + L + frames <= cap:
            return
        new_cap = max(cap, L + max(frames, slack))
        for bufs in (self.keys, self.values):
            for i, buf in enumerate(bufs):
                live = buf[:, :, self.start:self.start + L]
                if new_cap != cap:
                    grown = buf.new_empty(buf.shape[0], buf.shape[1], new_cap, buf.shape[3])
                    grown[:, :, :L] = live
                    bufs[i] = grown
                else:
                    buf[:, :, :L] = live.clone()
        self.start = 0

    def reset(self, mask: torch.Tensor) -> None:
        self.offset = self.offset.masked_fill(mask, 0)
        self.key_pos = self.key_pos.masked_fill(mask[:, None], -1)


class RotaryEmbedding(nn.Module):
    """``rotate_half`` RoPE (HF Llama/Mimi layout): channel ``i`` pairs with ``i + head_dim/2``."""

    def __init__(self, head_dim: int, max_period: float):
        super().__init__()
        inv = 1.0 / (max_period ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions`` int64 ``[B, T]`` -> cos, sin ``[B, 1, T, head_dim]``."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]
        return emb.cos(), emb.sin()

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Attention(nn.Module):
    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)


class MLP(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, dim_feedforward, bias=False)
        self.fc2 = nn.Linear(dim_feedforward, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = Attention(d, cfg.num_heads)
        self.mlp = MLP(d, cfg.dim_feedforward)
        self.input_layernorm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(d, eps=cfg.norm_eps)
        ls = cfg.layer_scale
        self.self_attn_layer_scale = LayerScale(d, ls) if ls is not None else nn.Identity()
        self.mlp_layer_scale = LayerScale(d, ls) if ls is not None else nn.Identity()

    def forward(self, x, cos, sin, mask, is_causal, cache: Optional[tuple] = None):
        """``x`` ``[B, T, D]`` -> ``[B, T, D]``. ``cache``: ``(keys, values, start, L)``, buffers
        ``[B, H, capacity, head_dim]`` holding ``L`` cached entries from ``start``; this call's
        keys/values are written after them and attention sees all ``L + T`` in time order."""
        B, T, D = x.shape
        attn = self.self_attn
        h = self.input_layernorm(x)
        q, k, v = attn.in_proj(h).view(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = RotaryEmbedding.apply(q, cos, sin)
        k = RotaryEmbedding.apply(k, cos, sin)
        if cache is not None:
            kbuf, vbuf, start, L = cache
            kbuf[:, :, start + L:start + L + T] = k
            vbuf[:, :, start + L:start + L + T] = v
            k, v = kbuf[:, :, start:start + L + T], vbuf[:, :, start:start + L + T]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        o = attn.out_proj(o.transpose(1, 2).reshape(B, T, D))
        x = x + self.self_attn_layer_scale(o)
        x = x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))
        return x


class StreamingTransformer(nn.Module):
    """``[B, T, D]`` -> ``[B, T, D]``, causal with a ``context``-frame window."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.num_layers)])
        self.rope = RotaryEmbedding(cfg.d_model // cfg.num_heads, cfg.max_period)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> TransformerState:
        device = device or self.rope.inv_freq.device
        H, hd = self.cfg.num_heads, self.cfg.d_model // self.cfg.num_heads
        empty = torch.zeros(batch_size, H, 0, hd, device=device, dtype=dtype)
        return TransformerState(offset=torch.zeros(batch_size, dtype=torch.long, device=device),
                                key_pos=torch.zeros(batch_size, 0, dtype=torch.long, device=device),
                                keys=[empty] * len(self.layers), values=[empty] * len(self.layers))

    def forward(self, x: torch.Tensor, state: Optional[TransformerState] = None) -> torch.Tensor:
        B, T, D = x.shape
        if T == 0:
            return x
        fresh = state is None
        if fresh:
            state = self.init_state(B, x.device, x.dtype)
        W = self.cfg.context
        pos = state.offset[:, None] + torch.arange(T, device=x.device)[None]  # [B, T]
        cos, sin = self.rope.cos_sin(pos)
        kpos = torch.cat([state.key_pos, pos], dim=1)  # [B, L + T]
        L = state.key_pos.shape[1]
        mask, is_causal = None, False
        if L == 0 and T <= W and fresh:
            is_causal = True  # plain causal: every earlier key is within the window
        elif not (T == 1 and bool((state.key_pos >= 0).all())):
            delta = pos[:, :, None] - kpos[:, None, :]  # [B, T, L + T]
            mask = ((delta >= 0) & (delta < W) & (kpos >= 0)[:, None, :])[:, None]
        keep = W - 1
        cache = not fresh and keep > 0
        if cache:
            state.make_room(T)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, is_causal,
                      (state.keys[i], state.values[i], state.start, L) if cache else None)
        if cache:
            state.start += L + T - min(L + T, keep)
            state.key_pos = kpos[:, -keep:]
        elif not fresh:
            state.key_pos = kpos[:, :0]
        if not fresh:
            state.offset = state.offset + T
        return x
