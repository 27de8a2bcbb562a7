"""Causal SEANet encoder/decoder (HF ``MimiEncoder``/``MimiDecoder``, moshi ``SEANetEncoder``/``SEANetDecoder``).

Module layout mirrors Hugging Face's so weight names map one to one: ``layers.{i}`` is a
``StreamingConv1d``/``StreamingConvTranspose1d``/``ResBlock`` or a parameter-free ELU, and a
``ResBlock`` holds ``block = [ELU, conv(k, dilation), ELU, conv(1)]`` and a ``shortcut``.

ELUs run in place except the first of a residual block (its input is the skip); the tensors
they overwrite are fresh outputs of the previous layer.

Streaming: each module's state is a `SeqState` (a list with one state per child, None for
stateless children); ``forward(x, state=None)`` runs offline on a fresh state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..config import SEANetConfig
from .conv import ConvState, ConvTransposeState, StreamingConv1d, StreamingConvTranspose1d


@dataclass
class SeqState:
    """States of a sequence of streaming modules, in order (None for stateless ones)."""

    children: list[Any]

    def reset(self, mask: torch.Tensor) -> None:
        for st in self.children:
            if st is not None:
                st.reset(mask)


class ELU(nn.ELU):
    """``nn.ELU`` (alpha 1). In CPU inference (no autograd) it is computed as
    ``max(x, exp(min(x, 0)) - 1)``: torch's CPU ELU evaluates ``expm1``, about 7x slower than
    ``exp`` here, and ELUs on the 24 kHz, 64-channel layers were a twentieth of a Mimi streaming
    step. The two differ by float rounding near 0 (|diff| <= 1.2e-7; tests), not in codes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.is_grad_enabled() or self.alpha != 1.0:
            return super().forward(x)
        y = torch.clamp(x, max=0.0).exp_().sub_(1.0)
        return torch.maximum(x, y, out=x) if self.inplace else torch.maximum(x, y, out=y)


def _init(module: nn.Module, batch_size: int, device, dtype):
    if isinstance(module, (StreamingConv1d, StreamingConvTranspose1d, ResBlock)):
        return module.init_state(batch_size, device, dtype)
    return None


def _run(modules: nn.ModuleList, x: torch.Tensor, state: Optional[SeqState]) -> torch.Tensor:
    for i, layer in enumerate(modules):
        if isinstance(layer, (StreamingConv1d, StreamingConvTranspose1d, ResBlock)):
            x = layer(x, None if state is None else state.children[i])
        else:
            x = layer(x)
    return x


class ResBlock(nn.Module):
    """Residual block: ``x + conv1(elu(conv_k(elu(x))))`` with a ``dim // compress`` bottleneck."""

    def __init__(self, dim: int, *, kernel_size: int, dilation: int, compress: int, pad_mode: str,
                 true_skip: bool = True):
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList([
            ELU(), StreamingConv1d(dim, hidden, kernel_size, dilation=dilation, pad_mode=pad_mode),
            ELU(inplace=True), StreamingConv1d(hidden, dim, 1, pad_mode=pad_mode),
        ])
        self.shortcut = nn.Identity() if true_skip else StreamingConv1d(dim, dim, 1, pad_mode=pad_mode)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> SeqState:
        return SeqState([_init(m, batch_size, device, dtype) for m in self.block])

    def forward(self, x: torch.Tensor, state: Optional[SeqState] = None) -> torch.Tensor:
        """``[B, dim, T]`` -> ``[B, dim, T]`` (stride-1 causal convs keep the length)."""
        y = _run(self.block, x, state)
        skip = self.shortcut(x) if isinstance(self.shortcut, StreamingConv1d) else x
        return skip + y


class SEANetEncoder(nn.Module):
    """Audio ``[B, channels, S]`` -> latent ``[B, dimension, S / hop]`` (``hop = prod(ratios)``)."""

    def __init__(self, cfg: SEANetConfig):
        super().__init__()
        pm = cfg.pad_mode
        layers: list[nn.Module] = [StreamingConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size, pad_mode=pm)]
        mult = 1
        for ratio in reversed(cfg.ratios):
            dim = mult * cfg.n_filters
            for j in range(cfg.n_residual_layers):
                layers.append(ResBlock(dim, kernel_size=cfg.residual_kernel_size, dilation=cfg.dilation_base ** j,
                                       compress=cfg.compress, pad_mode=pm, true_skip=cfg.true_skip))
            layers += [ELU(inplace=True), StreamingConv1d(dim, dim * 2, ratio * 2, stride=ratio, pad_mode=pm)]
            mult *= 2
        layers += [ELU(inplace=True),
                   StreamingConv1d(mult * cfg.n_filters, cfg.dimension, cfg.last_kernel_size, pad_mode=pm)]
        self.layers = nn.ModuleList(layers)
        self.hop_length = cfg.hop_length

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> SeqState:
        return SeqState([_init(m, batch_size, device, dtype) for m in self.layers])

    def forward(self, x: torch.Tensor, state: Optional[SeqState] = None) -> torch.Tensor:
        return _run(self.layers, x, state)


class SEANetDecoder(nn.Module):
    """Latent ``[B, dimension, T]`` -> audio ``[B, channels, T * hop]``."""

    def __init__(self, cfg: SEANetConfig):
        super().__init__()
        pm = cfg.pad_mode
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [StreamingConv1d(cfg.dimension, mult * cfg.n_filters, cfg.kernel_size, pad_mode=pm)]
        for ratio in cfg.ratios:
            dim = mult * cfg.n_filters
            layers += [ELU(inplace=True), StreamingConvTranspose1d(dim, dim // 2, ratio * 2, stride=ratio)]
            for j in range(cfg.n_residual_layers):
                layers.append(ResBlock(dim // 2, kernel_size=cfg.residual_kernel_size,
                                       dilation=cfg.dilation_base ** j, compress=cfg.compress, pad_mode=pm,
                                       true_skip=cfg.true_skip))
            mult //= 2
        layers += [ELU(inplace=True), StreamingConv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size, pad_mode=pm)]
        self.layers = nn.ModuleList(layers)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> SeqState:
        return SeqState([_init(m, batch_size, device, dtype) for m in self.layers])

    def forward(self, x: torch.Tensor, state: Optional[SeqState] = None) -> torch.Tensor:
        return _run(self.layers, x, state)


__all__ = ["SEANetEncoder", "SEANetDecoder", "ResBlock", "SeqState", "ConvState", "ConvTransposeState"]
