"""Codec configuration: frozen dataclasses and named presets.

A `CodecConfig` fully describes a streaming causal codec (Mimi architecture):

    audio [B, C, S] -> SEANet encoder (hop = prod(ratios)) -> encoder transformer
        -> learnt downsample (stride = frame_stride) -> split RVQ -> codes [B, K, T]
    codes -> RVQ decode -> learnt upsample -> decoder transformer -> SEANet decoder -> audio

The token hop in samples is ``prod(seanet.ratios) * frame_stride``; frame rate is
``sample_rate / hop``. Presets: ``mimi`` (kyutai's published shapes, 24 kHz, 12.5 Hz, 1 semantic
+ 31 acoustic codebooks of 2048), ``speechtok-16k-12.5hz`` and ``speechtok-16k-25hz`` (smaller,
trainable on 2 cores) and ``tiny`` (tests).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class SEANetConfig:
    """SEANet encoder/decoder (HF ``MimiEncoder``/``MimiDecoder``, moshi ``SEANetEncoder``).

    Attributes:
        channels: audio channels.
        dimension: latent channels at the SEANet output (= transformer width).
        n_filters: channels of the first conv; doubled at each downsampling.
        ratios: upsampling ratios, decoder order (the encoder downsamples in reverse).
        kernel_size, last_kernel_size, residual_kernel_size: conv kernel sizes.
        n_residual_layers: residual blocks per scale; dilation grows by ``dilation_base``.
        compress: residual block bottleneck factor (hidden = dim // compress).
        pad_mode: left padding of the causal convs ("constant" or "replicate").
        true_skip: identity skip in residual blocks (False: a 1x1 conv shortcut).
    """

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    n_residual_layers: int = 1
    dilation_base: int = 2
    compress: int = 2
    pad_mode: str = "constant"
    true_skip: bool = True

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


@dataclass(frozen=True)
class TransformerConfig:
    """Causal transformer with RoPE, layer scale and a bounded attention window.

    Attributes:
        d_model: width (must equal ``SEANetConfig.dimension``).
        num_heads, num_layers, dim_feedforward: sizes.
        context: attention window in frames (a query sees itself and ``context - 1`` past frames;
            HF ``sliding_window``, moshi ``context``).
        max_period: RoPE base (HF ``rope_theta``).
        layer_scale: initial layer-scale value (None: no layer scale).
        norm_eps: LayerNorm epsilon.
    """

    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250
    max_period: float = 10000.0
    layer_scale: float | None = 0.01
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class QuantizerSpec:
    """What the codec asks of its split RVQ (built by `speechtok.codec.quantization`).

    Attributes:
        n_q: total codebooks (semantic first).
        n_semantic: codebooks of the semantic RVQ (0: a plain RVQ).
        codebook_size: entries per codebook.
        codebook_dim: dimension of the quantized space (input/output projections map to it).
        topology: ``"split"`` (Mimi: semantic and acoustic RVQs side by side) or ``"rvq"`` (one
            RVQ whose first ``n_semantic`` levels are distilled, SpeechTokenizer); None picks
            ``"split"`` when ``n_semantic >= 1``.
        lookup: ``"euclidean"`` (EMA codebooks, Mimi) or ``"factorized"`` (l2-normalised
            low-dimensional lookup, DAC).
        lookup_dim: lookup dimension (None: ``codebook_dim`` for euclidean, 8 for factorized).
    """

    n_q: int = 32
    n_semantic: int = 1
    codebook_size: int = 2048
    codebook_dim: int = 256
    topology: Optional[str] = None
    lookup: str = "euclidean"
    lookup_dim: Optional[int] = None

    def __post_init__(self):
        if self.topology not in (None, "split", "rvq"):
            raise ValueError(f"quantizer.topology must be 'split', 'rvq' or null, got {self.topology!r}")
        if self.lookup not in ("euclidean", "factorized"):
            raise ValueError(f"quantizer.lookup must be 'euclidean' or 'factorized', got {self.lookup!r}")
        if self.topology == "split" and self.n_semantic < 1:
            raise ValueError("quantizer.topology 'split' needs n_semantic >= 1")


@dataclass(frozen=True)
class CodecConfig:
    """A whole codec. ``frame_stride`` is the learnt down/up-sampling factor from the SEANet rate
    to the token rate (1: none). ``upsample_groups`` of the transposed conv (Mimi: depthwise =
    ``dimension``). ``window_frames``: frames per window when encoding/decoding long inputs
    offline (memory stays constant with duration)."""

    name: str = "mimi"
    sample_rate: int = 24000
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    quantizer: QuantizerSpec = field(default_factory=QuantizerSpec)
    frame_stride: int = 2
    upsample_groups: int | None = None
    window_frames: int = 16

    def __post_init__(self):
        if self.transformer.d_model != self.seanet.dimension:
            raise ValueError(f"transformer.d_model={self.transformer.d_model} must equal "
                             f"seanet.dimension={self.seanet.dimension}")
        if not 0 <= self.quantizer.n_semantic < self.quantizer.n_q or self.quantizer.n_q < 1:
            raise ValueError(f"need 0 <= n_semantic < n_q, got {self.quantizer}")
        if self.frame_stride < 1 or self.window_frames < 1:
            raise ValueError("frame_stride and window_frames must be >= 1")

    @property
    def hop_length(self) -> int:
        """Audio samples per token frame."""
        return self.seanet.hop_length * self.frame_stride

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def channels(self) -> int:
        return self.seanet.channels

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"seanet": SEANetConfig, "transformer": TransformerConfig, "quantizer": QuantizerSpec}


def _section(cls, value: Any):
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; valid: {sorted(names)}")
    kw = dict(value)
    if "ratios" in kw:
        kw["ratios"] = tuple(kw["ratios"])
    return cls(**kw)


def config_from_dict(d: Mapping[str, Any]) -> CodecConfig:
    """Build a `CodecConfig` from ``to_dict()`` output, or ``{"preset": name, **overrides}``
    (overrides may be nested sections given partially, e.g. ``{"quantizer": {"n_q": 8}}``)."""
    d = dict(d)
    base = preset(d.pop("preset")) if "preset" in d else CodecConfig()
    kw: dict[str, Any] = {}
    for key, value in d.items():
        if key in _SECTIONS:
            cur = dataclasses.asdict(getattr(base, key))
            cur.update(value if not dataclasses.is_dataclass(value) else dataclasses.asdict(value))
            kw[key] = _section(_SECTIONS[key], cur)
        elif key in {f.name for f in dataclasses.fields(CodecConfig)}:
            kw[key] = value
        else:
            raise ValueError(f"CodecConfig: unknown field {key!r}")
    return dataclasses.replace(base, **kw)


def _mimi() -> CodecConfig:
    return CodecConfig()


def _small16k(name: str, frame_stride: int) -> CodecConfig:
    # 16 kHz, SEANet hop 640 (25 Hz): ratios 8*5*4*4; 12.5 Hz with a learnt stride-2 downsample.
    return CodecConfig(
        name=name, sample_rate=16000,
        seanet=SEANetConfig(dimension=256, n_filters=32, ratios=(8, 5, 4, 4)),
        # the transformers run at the SEANet rate (25 Hz): a 10 s window, as Mimi's
        transformer=TransformerConfig(d_model=256, num_heads=4, num_layers=4, dim_feedforward=1024, context=250),
        quantizer=QuantizerSpec(n_q=8, n_semantic=1, codebook_size=1024, codebook_dim=128),
        frame_stride=frame_stride, window_frames=32,
    )


def _tiny() -> CodecConfig:
    return CodecConfig(
        name="tiny", sample_rate=8000,
        seanet=SEANetConfig(dimension=16, n_filters=4, ratios=(4, 2), kernel_size=5),
        transformer=TransformerConfig(d_model=16, num_heads=2, num_layers=2, dim_feedforward=32, context=5,
                                      layer_scale=1.0),
        quantizer=QuantizerSpec(n_q=4, n_semantic=1, codebook_size=16, codebook_dim=8),
        frame_stride=2, window_frames=3,
    )


PRESETS = {
    "mimi": _mimi,
    "speechtok-16k-12.5hz": lambda: _small16k("speechtok-16k-12.5hz", 2),
    "speechtok-16k-25hz": lambda: _small16k("speechtok-16k-25hz", 1),
    "speechtok-16k": lambda: _small16k("speechtok-16k-12.5hz", 2),  # alias of the 12.5 Hz preset
    "tiny": _tiny,
}


def preset(name: str) -> CodecConfig:
    """A named preset config; the error lists the valid names."""
    if name not in PRESETS:
        raise KeyError(f"unknown codec preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]()
