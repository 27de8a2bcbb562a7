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
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from speechtok.formats import MAX_CODEBOOK_SIZE, MAX_CODEBOOKS, MAX_SAMPLE_RATE, safe_text


class CodecConfigError(ValueError):
    """A codec config value of the wrong type or out of range; the message starts with the key
    (``section.field``). Loaders prefix the file's path."""

    @property
    def key(self) -> str:
        """The key the message starts with, without an index (``seanet.ratios[2]`` -> ``seanet.ratios``)."""
        return re.match(r"[\w.]*", str(self)).group()


# Bounds on config values, checked before anything is built (a config file read from disk
# cannot make the loader allocate until out of memory). Generous: Mimi uses 8 layers of 512.
MAX_LAYERS = 64
MAX_DIM = 8192              # widths: SEANet channels, d_model, codebook dims
MAX_FEEDFORWARD = 32768
MAX_CONTEXT = 1 << 16       # attention window, frames
MAX_KERNEL = 64
MAX_RATIO = 64              # one SEANet ratio or the frame stride
MAX_SCALES = 8              # len(seanet.ratios)
MAX_WINDOW_FRAMES = 4096
MAX_AUDIO_CHANNELS = 16
MAX_ELEMENTS = 10 ** 9      # `estimated_elements`: parameters + one stream's state + one window (~4 GB fp32)


def _int(key: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecConfigError(f"{key} must be an integer, got {safe_text(repr(value), 60)}")
    if not lo <= value <= hi:
        raise CodecConfigError(f"{key}={value} is out of range [{lo}, {hi}]")


def is_number(value) -> bool:
    """A finite real number: not a bool, NaN or infinity, nor an int too large for a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _float(key: str, value, lo: float, hi: float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not is_number(value):
        raise CodecConfigError(f"{key} must be a finite number, got {safe_text(repr(value), 60)}")
    if not lo <= value <= hi:
        raise CodecConfigError(f"{key}={value} is out of range [{lo}, {hi}]")


def _choice(key: str, value, choices: tuple) -> None:
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise CodecConfigError(f"{key} must be one of {list(choices)}, got {safe_text(repr(value), 60)}")


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

    def __post_init__(self):
        _int("seanet.channels", self.channels, 1, MAX_AUDIO_CHANNELS)
        _int("seanet.dimension", self.dimension, 1, MAX_DIM)
        _int("seanet.n_filters", self.n_filters, 1, MAX_DIM)
        if not isinstance(self.ratios, (tuple, list)) or not 1 <= len(self.ratios) <= MAX_SCALES:
            raise CodecConfigError(f"seanet.ratios must be a list of 1 to {MAX_SCALES} integers, "
                                   f"got {safe_text(repr(self.ratios), 60)}")
        for i, r in enumerate(self.ratios):
            _int(f"seanet.ratios[{i}]", r, 1, MAX_RATIO)
        if self.n_filters * 2 ** len(self.ratios) > MAX_DIM:
            raise CodecConfigError(f"seanet.n_filters={self.n_filters} doubled at each of {len(self.ratios)} "
                                   f"ratios exceeds {MAX_DIM} channels")
        for key in ("kernel_size", "last_kernel_size", "residual_kernel_size"):
            _int(f"seanet.{key}", getattr(self, key), 1, MAX_KERNEL)
        _int("seanet.n_residual_layers", self.n_residual_layers, 0, 8)
        _int("seanet.dilation_base", self.dilation_base, 1, 8)
        _int("seanet.compress", self.compress, 1, self.n_filters)
        _choice("seanet.pad_mode", self.pad_mode, ("constant", "replicate"))
        _choice("seanet.true_skip", self.true_skip, (True, False))

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

    def __post_init__(self):
        _int("transformer.d_model", self.d_model, 1, MAX_DIM)
        _int("transformer.num_heads", self.num_heads, 1, self.d_model)
        if self.d_model % self.num_heads or self.d_model // self.num_heads % 2:
            raise CodecConfigError(f"transformer.num_heads={self.num_heads} must divide d_model={self.d_model} "
                                   "into heads of even width (RoPE)")
        _int("transformer.num_layers", self.num_layers, 0, MAX_LAYERS)
        _int("transformer.dim_feedforward", self.dim_feedforward, 1, MAX_FEEDFORWARD)
        _int("transformer.context", self.context, 1, MAX_CONTEXT)
        _float("transformer.max_period", self.max_period, 1.0, 1e12)
        _float("transformer.layer_scale", self.layer_scale, 0.0, 1e6, allow_none=True)
        _float("transformer.norm_eps", self.norm_eps, 1e-12, 1.0)


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
        _int("quantizer.n_q", self.n_q, 1, MAX_CODEBOOKS)
        _int("quantizer.n_semantic", self.n_semantic, 0, self.n_q - 1)
        _int("quantizer.codebook_size", self.codebook_size, 2, MAX_CODEBOOK_SIZE)
        _int("quantizer.codebook_dim", self.codebook_dim, 1, MAX_DIM)
        if self.lookup_dim is not None:
            _int("quantizer.lookup_dim", self.lookup_dim, 1, MAX_DIM)
        if self.topology not in (None, "split", "rvq"):
            raise CodecConfigError(f"quantizer.topology must be 'split', 'rvq' or null, got {self.topology!r}")
        if self.lookup not in ("euclidean", "factorized"):
            raise CodecConfigError(f"quantizer.lookup must be 'euclidean' or 'factorized', got {self.lookup!r}")
        if self.topology == "split" and self.n_semantic < 1:
            raise CodecConfigError("quantizer.topology 'split' needs n_semantic >= 1")


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
        for key, cls in _SECTIONS.items():
            if not isinstance(getattr(self, key), cls):
                raise CodecConfigError(f"{key} must be a {cls.__name__}, got {type(getattr(self, key)).__name__}")
        if not isinstance(self.name, str) or not self.name or len(self.name) > 200:
            raise CodecConfigError(f"name must be a non-empty string, got {safe_text(repr(self.name), 60)}")
        _int("sample_rate", self.sample_rate, 1, MAX_SAMPLE_RATE)
        _int("frame_stride", self.frame_stride, 1, MAX_RATIO)
        _int("window_frames", self.window_frames, 1, MAX_WINDOW_FRAMES)
        if self.upsample_groups is not None:
            _int("upsample_groups", self.upsample_groups, 1, self.seanet.dimension)
            if self.seanet.dimension % self.upsample_groups:
                raise CodecConfigError(f"upsample_groups={self.upsample_groups} must divide "
                                       f"seanet.dimension={self.seanet.dimension}")
        if self.transformer.d_model != self.seanet.dimension:
            raise CodecConfigError(f"transformer.d_model={self.transformer.d_model} must equal "
                                   f"seanet.dimension={self.seanet.dimension}")
        size = estimated_elements(self)
        if size > MAX_ELEMENTS:
            raise CodecConfigError(f"the config describes a codec of about {size:.3g} floats (parameters and "
                                   f"streaming state), more than the {MAX_ELEMENTS:.0e} allowed")

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


def estimated_elements(cfg: CodecConfig) -> int:
    """About how many floats building ``cfg`` and streaming one item allocate: parameters (encoder
    and decoder; codebooks with their EMA sums), one stream's attention caches and the first
    SEANet layer's output for one window. An estimate, within a small factor, for bounding."""
    sn, tr, q = cfg.seanet, cfg.transformer, cfg.quantizer
    widths = [sn.n_filters * 2 ** i for i in range(len(sn.ratios) + 1)]
    seanet = sn.channels * widths[0] * sn.kernel_size + widths[-1] * sn.dimension * sn.last_kernel_size
    for i, r in enumerate(sn.ratios):
        w = widths[i]
        seanet += sn.n_residual_layers * (w * (w // sn.compress) * sn.residual_kernel_size + w * w) \
            + w * widths[i + 1] * 2 * r
    d = tr.d_model
    transformer = tr.num_layers * (4 * d * d + 2 * d * tr.dim_feedforward)
    resample = 2 * d * d * 2 * cfg.frame_stride
    codebooks = q.n_q * q.codebook_size * (q.lookup_dim or q.codebook_dim) * 3
    state = 2 * tr.num_layers * 2 * tr.context * d
    window = cfg.window_frames * cfg.hop_length * widths[0]
    return 2 * (seanet + transformer) + resample + codebooks + state + window


_SECTIONS = {"seanet": SEANetConfig, "transformer": TransformerConfig, "quantizer": QuantizerSpec}


def _section(cls, kw: dict, key: str):
    """Section ``key`` of class ``cls`` from the dict ``kw`` (a full set of its fields, or more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(kw) - names))
    if unknown:
        raise CodecConfigError(f"{key}: unknown fields {[safe_text(u, 40) for u in unknown[:5]]}; "
                               f"valid: {sorted(names)}")
    if isinstance(kw.get("ratios"), list):
        kw["ratios"] = tuple(kw["ratios"])
    return cls(**kw)


def config_from_dict(d: Mapping[str, Any]) -> CodecConfig:
    """Build a `CodecConfig` from ``to_dict()`` output, or ``{"preset": name, **overrides}``
    (overrides may be nested sections given partially, e.g. ``{"quantizer": {"n_q": 8}}``).

    Every value is checked for type and range before anything is built; unknown keys are refused.
    Raises `CodecConfigError` (or KeyError for an unknown preset) naming the key."""
    if not isinstance(d, Mapping):
        raise CodecConfigError(f"the codec config must be a mapping, got {type(d).__name__}")
    d = dict(d)
    if "preset" in d and not isinstance(d["preset"], str):
        raise CodecConfigError(f"preset must be a string, got {safe_text(repr(d['preset']), 60)}")
    base = preset(d.pop("preset")) if "preset" in d else CodecConfig()
    kw: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(CodecConfig)}
    for key, value in d.items():
        if key in _SECTIONS:
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            if not isinstance(value, Mapping):
                raise CodecConfigError(f"{key} must be a mapping, got {type(value).__name__}")
            cur = dataclasses.asdict(getattr(base, key))
            cur.update(value)
            kw[key] = _section(_SECTIONS[key], cur, key)
        elif key in fields:
            kw[key] = value
        else:
            raise CodecConfigError(f"unknown field {safe_text(repr(key), 60)}; valid: {sorted(fields | {'preset'})}")
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
