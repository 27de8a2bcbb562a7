"""Feature extraction interface shared by MFCC, HuBERT/WavLM and Whisper extractors.

Shapes: audio ``[B, C, S]`` (samples at the extractor's ``sample_rate``), features ``[B, T, D]``
at ``spec.frame_rate`` Hz with ``lengths [B]`` valid frames (zeros past them).

Layer convention (``LAYER_CONVENTION``, stored in every `FeatureSpec`): layer ``L`` is the output
of transformer block ``L`` counted from 1; layer ``0`` is the input of the first block (the
feature projection plus convolutional position embedding). This is fairseq's
``output_layer=L`` and Hugging Face's ``hidden_states[L]``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Optional, Protocol, runtime_checkable

from speechtok.formats import MAX_SAMPLE_RATE, get_field, safe_text

if TYPE_CHECKING:  # pragma: no cover - torch is imported where tensors are made (`import speechtok` stays light)
    import torch

LAYER_CONVENTION = "block-output-1based;0=pre-transformer (fairseq output_layer=L, HF hidden_states[L])"


# Bounds on feature sizes read from files (checked before anything is allocated).
MAX_FEATURE_DIM = 1 << 16
MAX_LAYER = 1024


class FeatureError(ValueError):
    """Bad input to, or a mismatch between, feature extractors and the artefacts built on them."""


class MissingWeightsError(FeatureError):
    """An extractor that needs weights was asked to restore without them (e.g. from a feature
    store's ``extractor.json``, which never holds or locates weights)."""


def check_keys(d: dict, known, path, what: str, error: type[Exception] = FeatureError) -> None:
    """Raise ``error`` naming ``path`` when ``d`` has keys outside ``known``."""
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise error(f"{path}: unknown {what} keys {safe_text(unknown, 80)}; valid: {sorted(known)}")


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature vector is: stored with every artefact built from features.

    Attributes:
        kind: extractor family ("mfcc", "logmel", "hubert", "wavlm", "whisper").
        layer: transformer layer (see `LAYER_CONVENTION`); -1 for layerless features.
        frame_rate: frames per second (Hz).
        dim: feature dimension D.
        sample_rate: audio rate the extractor takes (Hz).
        checkpoint_hash: sha256 of the weights (or of the config for weightless extractors).
        layer_convention: the convention ``layer`` is counted in.
        options: extractor options that change the numbers (n_mels, deltas, window...).
    """

    kind: str
    layer: int
    frame_rate: float
    dim: int
    sample_rate: int
    checkpoint_hash: str
    layer_convention: str = LAYER_CONVENTION
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, path="feature spec") -> "FeatureSpec":
        """The spec of a JSON dict read from ``path``, every field checked for type and range."""
        def f(key, kind, **kw):
            return get_field(d, key, kind, path, FeatureError, "feature spec", **kw)

        return cls(kind=f("kind", str), layer=f("layer", int, lo=-1, hi=MAX_LAYER),
                   frame_rate=f("frame_rate", float, lo=1e-3, hi=MAX_SAMPLE_RATE),
                   dim=f("dim", int, lo=1, hi=MAX_FEATURE_DIM),
                   sample_rate=f("sample_rate", int, lo=1, hi=MAX_SAMPLE_RATE),
                   checkpoint_hash=f("checkpoint_hash", str),
                   layer_convention=f("layer_convention", str, default=LAYER_CONVENTION),
                   options=f("options", dict, default={}))

    def digest(self) -> str:
        """sha256 over the JSON form: two specs with the same digest produce the same numbers."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def check_compatible(self, other: "FeatureSpec", what: str = "features") -> None:
        """Raise `FeatureError` naming the differing fields when ``other`` is not the same features."""
        diff = [k for k in ("kind", "layer", "dim", "frame_rate", "checkpoint_hash", "layer_convention")
                if getattr(self, k) != getattr(other, k)]
        if diff:
            detail = ", ".join(f"{k}: {getattr(self, k)!r} vs {getattr(other, k)!r}" for k in diff)
            raise FeatureError(f"{what} were made with other features ({detail})")


@dataclass(frozen=True, eq=False)
class Features:
    """A batch of features: ``feats`` float32 ``[B, T, D]`` (zero past ``lengths``), ``lengths``
    int64 ``[B]`` valid frames, and the ``spec`` saying what they are."""

    feats: torch.Tensor
    lengths: torch.Tensor
    spec: FeatureSpec

    def unbatch(self) -> list[torch.Tensor]:
        """One ``[T_b, D]`` tensor per item."""
        return [self.feats[b, : int(n)] for b, n in enumerate(self.lengths)]


@runtime_checkable
class FeatureExtractor(Protocol):
    """What every feature extractor is (MFCC, HuBERT/WavLM/wav2vec2, Whisper, ...).

    ``extract(wav [B, C, S], lengths [B]) -> Features``: audio at ``sample_rate`` (zero-padded past
    ``lengths``), features at ``spec.frame_rate`` Hz; a padded batch equals per-item calls.
    ``frame_offset_s``: the centre of frame 0 in seconds (frame ``j`` is centred at
    ``frame_offset_s + j / spec.frame_rate``), which is how a teacher aligns to a codec's frames.
    ``describe()`` (JSON) and ``weights()`` (tensors, empty for weightless extractors) are what a
    unit tokenizer directory stores; the registry's ``restore`` rebuilds the extractor from them.

    Every extractor class (one entry of `speechtok.units.features.EXTRACTORS`) also has two
    classmethods, which the registry calls:
    ``load(source, *, layer=None, trust_pickle=False, device="cpu", **options)`` (``source``: a
    checkpoint file/directory or None; ``layer`` per `LAYER_CONVENTION`, None = the model's
    default; a class registered under several kinds also gets ``kind=``) and
    ``restore(config, weights, path, device="cpu")`` (``config``: ``describe()["config"]``;
    raises `MissingWeightsError` when it needs weights and ``weights`` is empty).
    ``describe()`` is ``{"type": kind, "config": {...}, "checkpoint_hash": ...}``.
    """

    spec: FeatureSpec
    sample_rate: int
    frame_offset_s: float

    def extract(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Features: ...

    def num_frames(self, num_samples: int) -> int: ...

    def describe(self) -> dict: ...

    def weights(self) -> dict: ...


@runtime_checkable
class LayeredExtractor(FeatureExtractor, Protocol):
    """An extractor of a layered model: any of its layers (``0..num_layers``, `LAYER_CONVENTION`)
    from one forward pass. ``extract_layers`` returns ``{layer: Features}`` with each layer's spec."""

    num_layers: int

    def extract_layers(self, wav: torch.Tensor, lengths: Optional[torch.Tensor],
                       layers) -> dict: ...


def check_layers(layers, num_layers: int) -> list[int]:
    """``layers`` (ints in ``0..num_layers``, at least one) as a sorted list without repeats."""
    layers = list(layers) if isinstance(layers, (list, tuple, set, range)) else [layers]
    if not all(isinstance(L, int) and not isinstance(L, bool) for L in layers):
        raise FeatureError(f"layers must be integers, got {safe_text(repr(layers), 60)}")
    out = sorted(set(layers))
    if not out or out[0] < 0 or out[-1] > num_layers:
        raise FeatureError(f"layers {safe_text(out, 60)} must be 1 or more of 0..{num_layers} ({LAYER_CONVENTION})")
    return out


def check_audio(wav: torch.Tensor, lengths: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``[B, C, S]`` (or ``[C, S]``) audio; mix to mono. Returns (``[B, S]``, lengths ``[B]``)."""
    import torch

    if wav.dim() == 2:
        wav = wav[None]
    if wav.dim() != 3:
        raise FeatureError(f"audio must be [B, C, S] or [C, S], got shape {tuple(wav.shape)}")
    B, _, S = wav.shape
    mono = wav.float().mean(dim=1)
    if lengths is None:
        lengths = torch.full((B,), S, dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long).to(mono.device)
    if tuple(lengths.shape) != (B,) or (B and (int(lengths.max()) > S or int(lengths.min()) < 0)):
        raise FeatureError(f"lengths must be [B]={B} values in [0, {S}], got {lengths.tolist()}")
    mask = torch.arange(S, device=mono.device)[None, :] < lengths[:, None]
    return mono * mask, lengths


def mask_features(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero ``[B, T, D]`` features past ``lengths``."""
    import torch

    T = feats.shape[1]
    mask = torch.arange(T, device=feats.device)[None, :] < lengths.to(feats.device)[:, None]
    return torch.where(mask[:, :, None], feats, torch.zeros((), dtype=feats.dtype, device=feats.device))


def pad_stack(items: list[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[T_i, D]`` tensors into ``[B, T_max, D]`` zero-padded, with lengths ``[B]``."""
    import torch

    T = max((x.shape[0] for x in items), default=0)
    out = torch.zeros(len(items), T, dim, dtype=torch.float32)
    for i, x in enumerate(items):
        out[i, : x.shape[0]] = x
    return out, torch.tensor([x.shape[0] for x in items], dtype=torch.long)
