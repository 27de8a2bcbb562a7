"""Learnt resampling between the SEANet rate and the token rate (HF ``downsample``/``upsample``).

``ConvDownsample``: causal strided conv, kernel ``2 * stride``, no bias, replicate left padding
(Mimi pads with the first latent frame). ``ConvUpsample``: causal transposed conv, kernel
``2 * stride``, no bias, grouped (Mimi: depthwise, ``groups = dimension``).
Both take ``[B, D, T]`` and carry a streaming state like every module in `conv`.
"""
from __future__ import annotations

from .conv import StreamingConv1d, StreamingConvTranspose1d


class ConvDownsample(StreamingConv1d):
    """``[B, D, T]`` -> ``[B, D, T / stride]``; weight ``conv.weight`` ``[D, D, 2 * stride]``."""

    def __init__(self, dimension: int, stride: int):
        super().__init__(dimension, dimension, 2 * stride, stride=stride, bias=False, pad_mode="replicate")


class ConvUpsample(StreamingConvTranspose1d):
    """``[B, D, T]`` -> ``[B, D, T * stride]``; weight ``conv.weight`` ``[D, D / groups, 2 * stride]``."""

    def __init__(self, dimension: int, stride: int, groups: int | None = None):
        super().__init__(dimension, dimension, 2 * stride, stride=stride, groups=groups or dimension, bias=False)
