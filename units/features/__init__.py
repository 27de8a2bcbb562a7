"""The one feature layer: MFCC/log-mel, HuBERT/WavLM/wav2vec2 (torchaudio), Whisper, by kind.

Every extractor follows `FeatureExtractor` (``extract(wav [B, C, S], lengths [B]) ->
Features(feats [B, T, D], lengths [B], spec)``, ``frame_offset_s``, ``describe()``, ``weights()``);
layered models also `LayeredExtractor` (``extract_layers``). Unit tokenizers and codec teachers
(`speechtok.codec.teachers.ExtractorTeacher`) are built on the same objects::

    ext = load_extractor("hubert", "hf_hubert_dir", layer=6)     # or "mfcc", "wavlm", "whisper", ...
    desc, weights = ext.describe(), ext.weights()                 # what a unit tokenizer directory stores
    same = restore_extractor(desc, weights)                       # and how it is rebuilt

`EXTRACTORS` maps each kind to its class (``"module:Class"``, imported only when used). Adding a
model is one class with ``load``/``restore`` classmethods (see `FeatureExtractor`) and one entry
here; a class registered under several kinds gets ``kind=`` in ``load``.

Saved descriptions: ``{"type": kind, "config": {...}, "checkpoint_hash": ...}``. Older unit
tokenizer directories wrote ``"type": "ssl"`` (the kind in ``config.kind``, the hash only at top
level) and ``"type": "mfcc"`` for log-mel too: both still restore (`LEGACY_TYPES`), and new
directories are written with the kind as the type.
"""
from __future__ import annotations

import importlib
from typing import Optional

from speechtok.formats import get_field, safe_text

from .base import (LAYER_CONVENTION, FeatureError, FeatureExtractor, Features, FeatureSpec, LayeredExtractor,
                   MissingWeightsError)

__all__ = ["LAYER_CONVENTION", "FeatureError", "FeatureExtractor", "Features", "FeatureSpec", "LayeredExtractor",
           "MissingWeightsError", "EXTRACTORS", "extractor_class", "load_extractor", "restore_extractor"]

_MFCC = "speechtok.units.features.mfcc:MFCCExtractor"
_SSL = "speechtok.units.features.ssl:SSLExtractor"
EXTRACTORS: dict[str, str] = {
    "mfcc": _MFCC,
    "logmel": _MFCC,
    "hubert": _SSL,
    "wavlm": _SSL,
    "wav2vec2": _SSL,
    "whisper": "speechtok.units.features.whisper:WhisperExtractor",
}


def _legacy_ssl(desc: dict, config: dict, path) -> tuple[str, dict]:
    """``{"type": "ssl", "config": {kind, ...}, "checkpoint_hash": h}`` -> (an SSL kind, config with ``h``)."""
    h = get_field(desc, "checkpoint_hash", str, path, FeatureError, "SSL extractor", default=None, allow_none=True)
    return "hubert", (config if h is None else {**config, "checkpoint_hash": h})


# saved types of older directories -> (desc, config, path) -> (a kind of the same class, config)
LEGACY_TYPES = {"ssl": _legacy_ssl}


def extractor_class(kind: str, path="feature extractor") -> type:
    """The class registered for ``kind``; the error lists the kinds."""
    target = EXTRACTORS.get(kind) if isinstance(kind, str) else None
    if target is None:
        raise FeatureError(f"{path}: unknown feature extractor kind {safe_text(repr(kind), 40)}; "
                           f"kinds: {', '.join(EXTRACTORS)}")
    module, name = target.split(":")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and callable(getattr(cls, "load", None)) and callable(getattr(cls, "restore", None))):
        raise FeatureError(f"{target} (kind {kind!r}) is not an extractor class with load/restore classmethods")
    return cls


def _shared(kind: str) -> bool:
    """Whether ``kind``'s class serves other kinds too (then its ``load`` is told which)."""
    return sum(v == EXTRACTORS[kind] for v in EXTRACTORS.values()) > 1


def _checked(ext, kind: str, what) -> FeatureExtractor:
    if not isinstance(ext, FeatureExtractor):
        raise FeatureError(f"{what}: {type(ext).__name__} does not follow the FeatureExtractor protocol")
    if EXTRACTORS.get(ext.spec.kind) != EXTRACTORS[kind]:
        raise FeatureError(f"{what}: kind {kind!r} made {safe_text(repr(ext.spec.kind), 40)} features")
    return ext


def load_extractor(kind: str, source=None, *, layer: Optional[int] = None, trust_pickle: bool = False,
                   device="cpu", **options) -> FeatureExtractor:
    """An extractor of ``kind`` (`EXTRACTORS`) from ``source`` (None for MFCC/log-mel; a Hugging
    Face directory or, with ``trust_pickle``, a fairseq ``.pt`` for hubert/wavlm/wav2vec2; for
    whisper what its class takes) read at ``layer`` (`LAYER_CONVENTION`; None = the model's
    default), on ``device``; ``options`` are the class's (e.g. ``n_mels``, ``normalize_audio``)."""
    cls = extractor_class(kind)
    if _shared(kind) and options.setdefault("kind", kind) != kind:
        raise FeatureError(f"kind {kind!r} and option kind={safe_text(repr(options['kind']), 40)} differ")
    ext = cls.load(source, layer=layer, trust_pickle=trust_pickle, device=device, **options)
    return _checked(ext, kind, source if source is not None else kind)


def restore_extractor(desc: dict, weights: Optional[dict] = None, device="cpu", path="extractor") -> FeatureExtractor:
    """Inverse of ``describe()`` + ``weights()``: ``desc`` (read from ``path``, checked) and its
    tensors -> the extractor; `MissingWeightsError` when it needs weights that are absent."""
    if not isinstance(desc, dict):
        raise FeatureError(f"{path}: a feature extractor description must be a JSON object")
    kind = get_field(desc, "type", str, path, FeatureError, "feature extractor")
    config = get_field(desc, "config", dict, path, FeatureError, "feature extractor")
    if kind in LEGACY_TYPES:
        kind, config = LEGACY_TYPES[kind](desc, config, path)
    ext = extractor_class(kind, path).restore(config, dict(weights or {}), path, device=device)
    ext = _checked(ext, kind, path)
    h = get_field(desc, "checkpoint_hash", str, path, FeatureError, "feature extractor", default=None,
                  allow_none=True)
    if h is not None and ext.spec.checkpoint_hash != h:
        raise FeatureError(f"{path}: the restored extractor has weights sha256 {ext.spec.checkpoint_hash[:12]}, "
                           f"its description says {safe_text(h[:12], 12)}")
    return ext
