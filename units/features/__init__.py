"""Feature extractors for speech units: MFCC/log-mel, HuBERT/WavLM (torchaudio), Whisper (CTranslate2).

All follow `FeatureExtractor`: ``extract(wav [B, C, S], lengths [B]) -> Features(feats [B, T, D],
lengths [B], spec)``. `extractor_config` / `build_extractor` turn an extractor into a JSON dict
(+ weights) and back, which is how unit tokenizer directories store them.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Optional

from .base import LAYER_CONVENTION, FeatureError, FeatureExtractor, Features, FeatureSpec

__all__ = ["LAYER_CONVENTION", "FeatureError", "FeatureExtractor", "Features", "FeatureSpec",
           "extractor_config", "extractor_state", "build_extractor"]


def extractor_config(ext) -> dict:
    """``{"type": "mfcc"|"ssl"|"whisper", "config": {...}}`` describing ``ext``."""
    from .mfcc import MFCCExtractor
    from .ssl import SSLExtractor

    if isinstance(ext, MFCCExtractor):
        return {"type": "mfcc", "config": asdict(ext.config)}
    if isinstance(ext, SSLExtractor):
        return {"type": "ssl", "config": ext.config.to_dict(), "checkpoint_hash": ext.checkpoint_hash}
    if type(ext).__name__ == "WhisperExtractor":
        return {"type": "whisper", "config": asdict(ext.config)}
    raise FeatureError(f"cannot describe extractor of type {type(ext).__name__}")


def extractor_state(ext) -> dict:
    """Weights to save beside the config (torchaudio names; empty for weightless extractors)."""
    from .ssl import SSLExtractor

    return dict(ext.model.state_dict()) if isinstance(ext, SSLExtractor) else {}


def build_extractor(desc: dict, state_dict: Optional[dict] = None, device: str = "cpu"):
    """Inverse of `extractor_config` (+ `extractor_state`)."""
    kind = desc.get("type")
    if kind == "mfcc":
        from .mfcc import MFCCConfig, MFCCExtractor

        return MFCCExtractor(MFCCConfig(**desc["config"]))
    if kind == "ssl":
        from .ssl import SSLConfig, build_ssl_extractor

        if not state_dict:
            raise FeatureError("an SSL extractor needs its weights (none were saved)")
        ext = build_ssl_extractor(SSLConfig.from_dict(desc["config"]), state_dict, desc.get("checkpoint_hash"))
        return ext.to(device)
    if kind == "whisper":
        from .whisper import WhisperConfig, WhisperExtractor

        cfg = dict(desc["config"])
        if str(device).startswith("cuda"):
            cfg["device"] = "cuda"
        return WhisperExtractor(WhisperConfig(**cfg))
    raise FeatureError(f"unknown feature extractor type {kind!r} (known: mfcc, ssl, whisper)")
