"""Causal streaming convolutions with typed state (moshi ``StreamingConv1d``/``StreamingConvTranspose1d``,
HF ``MimiConv1d``/``MimiConvTranspose1d``).

Every module here is *one* code path for offline and streaming use: ``forward(x, state=None)``
runs on a fresh state when none is given, so offline output is, by construction, the streaming
output for a single chunk. A state is a small mutable dataclass owned by the caller (a
`speechtok.codec.streaming.CodecStream` session); modules never keep hidden streaming state.

Shapes: ``[B, C, T]`` (batch, channels, time steps at the module's input rate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ConvState:
    """State of a causal conv: input samples carried to the next call.

    Attributes:
        previous: ``[B, C_in, P]`` the left context plus unconsumed inputs (``P >= kernel - stride``).
        first: ``[B]`` bool, only for ``pad_mode="replicate"``: items whose left context is still
            to be filled with their first sample (moshi/HF replicate padding).
    """

    previous: torch.Tensor
    first: Optional[torch.Tensor] = None
    context: int = 0

    def reset(self, mask: torch.Tensor) -> None:
        """Restart the items where ``mask`` ``[B]`` is True (only at a frame boundary, where
        every item holds exactly the left context)."""
        if self.previous.shape[-1] != self.context:
            raise RuntimeError(f"conv state holds {self.previous.shape[-1]} samples, expected {self.context}: "
                               "reset is only possible at a frame boundary")
        self.previous = self.previous.clone()
        self.previous[mask] = 0.0
        if self.first is not None:
            self.first = self.first | mask


class StreamingConv1d(nn.Module):
    """Causal 1-d convolution: left padding ``(kernel - 1) * dilation + 1 - stride``, no lookahead.

    Output frame ``t`` covers inputs ``[t * stride - pad, t * stride - pad + kernel_eff)``; an
    input of ``L`` samples (fresh state) yields ``floor(L / stride)`` frames; trailing samples
    that do not complete a frame wait in the state. Weights: ``conv.weight`` ``[C_out, C_in/groups, k]``
    (HF ``*.conv.weight``; moshi ``*.conv.conv.weight``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = True, pad_mode: str = "constant"):
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode must be 'constant' or 'replicate', got {pad_mode!r}")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation,
                              groups=groups, bias=bias)
        self.stride = stride
        self.kernel_eff = (kernel_size - 1) * dilation + 1
        if self.kernel_eff < stride:
            raise ValueError(f"effective kernel {self.kernel_eff} < stride {stride} would skip samples")
        self.context = self.kernel_eff - stride
        self.pad_mode = pad_mode

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> ConvState:
        w = self.conv.weight
        prev = torch.zeros(batch_size, self.conv.in_channels, self.context, device=device or w.device, dtype=dtype)
        first = None
        if self.pad_mode == "replicate":
            first = torch.ones(batch_size, dtype=torch.bool, device=prev.device)
        return ConvState(prev, first, self.context)

    def forward(self, x: torch.Tensor, state: Optional[ConvState] = None) -> torch.Tensor:
        """``x`` ``[B, C_in, L]`` -> ``[B, C_out, n]`` with ``n`` the frames completed."""
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        if state.first is not None and x.shape[-1] > 0:
            first = state.first
            if bool(first.all()):
                state.previous = x[:, :, :1].expand(-1, -1, state.previous.shape[-1]).to(state.previous.dtype)
            elif bool(first.any()):
                prev = state.previous.clone()
                prev[first] = x[first, :, :1].expand(-1, -1, prev.shape[-1])
                state.previous = prev
            first.zero_()
        if state.previous.shape[-1] == self.context and x.shape[-1] >= 2 * self.kernel_eff \
                and x.shape[-1] % self.stride == 0:
            return self._aligned(x, state)
        xs = torch.cat([state.previous, x], dim=-1) if state.previous.shape[-1] else x
        total = xs.shape[-1]
        n = (total - self.kernel_eff) // self.stride + 1 if total >= self.kernel_eff else 0
        if n <= 0:
            state.previous = xs
            return xs.new_zeros(xs.shape[0], self.conv.out_channels, 0)
        used = (n - 1) * self.stride + self.kernel_eff
        y = self.conv(xs[..., :used])
        state.previous = xs[..., n * self.stride:].contiguous()
        return y

    def _aligned(self, x: torch.Tensor, state: ConvState) -> torch.Tensor:
        """Fast path when the state holds exactly the left context and ``x`` is a whole number of
        strides: convolve ``x`` with built-in zero padding (no copy of the input), then recompute
        the few leading frames that reach into the carried context."""
        c, p, s = self.conv, self.context, self.stride
        n = x.shape[-1] // s
        y = F.conv1d(x, c.weight, c.bias, s, p, c.dilation, c.groups)[..., :n]
        head = -(-p // s)  # frames whose window starts before x
        if head and p:
            xs = torch.cat([state.previous, x[..., : (head - 1) * s + self.kernel_eff - p]], dim=-1)
            y[..., :head] = c(xs)
        state.previous = x[..., n * s - p:].contiguous() if p else x[..., :0]
        return y


@dataclass
class ConvTransposeState:
    """State of a causal transposed conv: ``partial`` ``[B, C_out, kernel - stride]``, the overlap
    already computed for the next outputs (without bias)."""

    partial: torch.Tensor

    def reset(self, mask: torch.Tensor) -> None:
        self.partial = self.partial.clone()
        self.partial[mask] = 0.0


class StreamingConvTranspose1d(nn.Module):
    """Causal transposed convolution: ``T`` input frames -> ``T * stride`` output samples.

    The ``kernel - stride`` trailing outputs (which still need future inputs) are kept as
    overlap in the state instead of being emitted; offline they are trimmed (HF
    ``trim_right_ratio=1``), so streamed and offline outputs agree. Weights: ``conv.weight``
    ``[C_in, C_out/groups, k]``; ``conv.bias`` is added once per output sample.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel {kernel_size} < stride {stride}")
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
        self.stride = stride
        self.overlap = kernel_size - stride

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> ConvTransposeState:
        w = self.conv.weight
        return ConvTransposeState(torch.zeros(batch_size, self.conv.out_channels, self.overlap,
                                              device=device or w.device, dtype=dtype))

    def forward(self, x: torch.Tensor, state: Optional[ConvTransposeState] = None) -> torch.Tensor:
        """``x`` ``[B, C_in, T]`` -> ``[B, C_out, T * stride]``."""
        B, _, T = x.shape
        if T == 0:
            return x.new_zeros(B, self.conv.out_channels, 0)
        c = self.conv
        n = T * self.stride
        if c.groups == 1 and self.overlap == self.stride:
            return self._two_tap(x, state)
        y = F.conv_transpose1d(x, c.weight, None, self.stride, groups=c.groups)
        if state is not None and self.overlap:
            y[..., :self.overlap] += state.partial
        if state is not None:
            state.partial = y[..., n:].contiguous()
        y = y[..., :n]
        if c.bias is not None:
            y = y + c.bias[:, None]
        return y

    def _two_tap(self, x: torch.Tensor, state: Optional[ConvTransposeState]) -> torch.Tensor:
        """``kernel == 2 * stride`` (SEANet): one matmul gives every frame's ``2 * stride`` outputs;
        output block ``t`` is the first half of frame ``t`` plus the second half of frame ``t - 1``
        (faster than the generic transposed conv on CPU, same sums)."""
        c, s = self.conv, self.stride
        B, Cin, T = x.shape
        Cout = c.out_channels
        frames = torch.matmul(x.transpose(1, 2), c.weight.reshape(Cin, Cout * 2 * s)).view(B, T, Cout, 2, s)
        y = frames[:, :, :, 0, :].clone()  # [B, T, Cout, s]
        y[:, 1:] += frames[:, :-1, :, 1, :]
        if state is not None:
            y[:, 0] += state.partial.view(B, Cout, s)
            state.partial = frames[:, -1, :, 1, :].reshape(B, Cout, s).contiguous()
        y = y.permute(0, 2, 1, 3).reshape(B, Cout, T * s)
        if c.bias is not None:
            y = y + c.bias[:, None]
        return y
