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
        total = state.previous.shape[-1] + x.shape[-1]
        n = (total - self.kernel_eff) // self.stride + 1 if total >= self.kernel_eff else 0
        path = self._cpu_path(x, n)
        if path == "taps" and n > 0:
            return self._taps(x, state, n)
        if path is None and state.previous.shape[-1] == self.context and x.shape[-1] >= 2 * self.kernel_eff \
                and x.shape[-1] % self.stride == 0:
            return self._aligned(x, state)
        xs = torch.cat([state.previous, x], dim=-1) if state.previous.shape[-1] else x
        if n <= 0:
            state.previous = xs
            return xs.new_zeros(xs.shape[0], self.conv.out_channels, 0)
        used = (n - 1) * self.stride + self.kernel_eff
        y = self._gemm(xs[..., :used], n) if path == "gemm" else self.conv(xs[..., :used])
        state.previous = xs[..., n * self.stride:].contiguous()
        return y

    # CPU inference paths (same sums as the convolution, float rounding aside): oneDNN's direct
    # convolution is slow for 1 input channel, few output channels, strided wide kernels and
    # short low-rate inputs; there an explicit GEMM is 2-4x faster (benchmarks/codec_speed.py).
    def _cpu_path(self, x: torch.Tensor, n: int) -> Optional[str]:
        """``"gemm"`` (unfold + matmul), ``"taps"`` (one matmul for all taps, shifted sums) or
        None (``F.conv1d``). Only without autograd on CPU, so training numerics are unchanged."""
        c = self.conv
        if x.device.type != "cpu" or torch.is_grad_enabled() or c.groups != 1 or c.dilation[0] != 1:
            return None
        width = c.in_channels * c.kernel_size[0]
        if self.stride == 1 and c.out_channels <= 4 and c.kernel_size[0] > 1:
            return "taps"
        if c.in_channels == 1 or (self.stride > 1 and width >= 1024) or (self.stride == 1 and n <= 8 and width >= 2048):
            return "gemm"
        return None

    def _gemm(self, xs: torch.Tensor, n: int) -> torch.Tensor:
        """``xs`` ``[B, C_in, (n - 1) * stride + kernel]`` -> ``[B, C_out, n]`` as
        ``weight [C_out, C_in * k] @ patches [B, C_in * k, n]``."""
        c = self.conv
        B, C, _ = xs.shape
        k = c.kernel_size[0]
        w = c.weight.reshape(c.out_channels, C * k)
        patches = xs.unfold(2, k, self.stride)  # [B, C, n, k]
        if n <= 4:  # a few frames (streaming steps): the weight-streaming (GEMV-like) layout is 2x faster
            y = F.linear(patches.permute(0, 2, 1, 3).reshape(B * n, C * k), w, c.bias)
            return y.view(B, n, -1).transpose(1, 2).contiguous()
        # an explicit bmm on contiguous patches: torch.matmul(2-d, 3-d) may fold the batch into the
        # rows of (patches^T @ w^T) and return a transposed output whose copy cost more than the GEMM
        y = torch.bmm(w.expand(B, -1, -1), patches.transpose(2, 3).reshape(B, C * k, n).contiguous())
        return y.add_(c.bias[:, None]) if c.bias is not None else y

    def _taps(self, x: torch.Tensor, state: ConvState, n: int) -> torch.Tensor:
        """Stride 1, few output channels: ``r = W_taps [k * C_out, C_in] @ x`` once, then
        ``y[t] = sum_j r_j[t + j]`` (reads the wide input once instead of ``C_out`` times)."""
        c = self.conv
        k, O = c.kernel_size[0], c.out_channels
        prev = state.previous
        wt = c.weight.permute(2, 0, 1).reshape(k * O, c.in_channels)
        r = torch.matmul(wt, x)
        if prev.shape[-1]:
            r = torch.cat([torch.matmul(wt, prev), r], dim=-1)
        r = r.view(x.shape[0], k, O, -1)
        y = r[:, 0, :, :n].clone()
        for j in range(1, k):
            y += r[:, j, :, j:j + n]
        if c.bias is not None:
            y += c.bias[:, None]
        keep = self.context  # the last kernel - 1 samples of [previous, x]
        state.previous = torch.cat([prev[..., -keep:], x[..., -keep:]], dim=-1)[..., -keep:].contiguous() \
            if keep else x[..., :0]
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
        if T >= 8 and x.device.type == "cpu" and not torch.is_grad_enabled():
            return self._two_tap_channels_first(x, state)
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

    def _two_tap_channels_first(self, x: torch.Tensor, state: Optional[ConvTransposeState]) -> torch.Tensor:
        """`_two_tap` for longer CPU inference inputs: ``[W_now; W_prev] @ x`` in one matmul (each
        weight read once), then output block ``t`` = ``W_now x[t] + W_prev x[t - 1]``, computed as
        ``[B, C_out, s, T]`` so only one transpose copy remains."""
        c, s = self.conv, self.stride
        B, Cin, T = x.shape
        Cout = c.out_channels
        p = torch.matmul(self._stacked_weights(), x).view(B, 2, Cout, s, T)
        y, prev = p[:, 0], p[:, 1]
        y[..., 1:] += prev[..., :-1]
        if state is not None:
            y[..., 0] += state.partial.view(B, Cout, s)
            state.partial = prev[..., -1].contiguous()
        y = y.transpose(2, 3).reshape(B, Cout, T * s)
        return y.add_(c.bias[:, None]) if c.bias is not None else y

    def _stacked_weights(self) -> torch.Tensor:
        """``[W_now; W_prev]`` ``[2 * C_out * stride, C_in]`` contiguous: the taps applied to the
        current frame, then those applied to the previous one. Cached (inference only), keyed by
        the weight's identity and version counter, so an update or reload rebuilds it."""
        w = self.conv.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        cache = self.__dict__.get("_stacked_cache")
        if cache is None or cache[0] != key:
            Cin, Cout, s = w.shape[0], self.conv.out_channels, self.stride
            stacked = w.detach().view(Cin, Cout, 2, s).permute(2, 1, 3, 0).reshape(2 * Cout * s, Cin).contiguous()
            cache = (key, stacked)
            self.__dict__["_stacked_cache"] = cache
        return cache[1]
