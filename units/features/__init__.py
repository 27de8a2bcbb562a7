"""Feature extractors for speech units: MFCC/log-mel, HuBERT/WavLM (torchaudio), Whisper (CTranslate2).

All follow `FeatureExtractor`: ``extract(wav [B, C, S], lengths [B]) -> Features(feats [B, T, D],
lengths [B], spec)``. `extractor_config` / `build_extractor` turn an extractor into a JSON dict
(+ weights) and back, which is how unit tokenizer directories store them.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Optional

from speechtok.formats import get_field, safe_text

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


def build_extractor(desc: dict, state_dict: Optional[dict] = None, device: str = "cpu", path="extractor"):
    """Inverse of `extractor_config` (+ `extractor_state`); ``desc`` read from ``path`` is checked."""
    kind = get_field(desc, "type", str, path, FeatureError, "feature extractor")
    get_field(desc, "config", dict, path, FeatureError, "feature extractor")
    if kind == "mfcc":
        from .mfcc import MFCCConfig, MFCCExtractor

        return MFCCExtractor(MFCCConfig.from_dict(desc["config"], path))
    if kind == "ssl":
        from .ssl import SSLConfig, build_ssl_extractor

        if not state_dict:
            raise FeatureError("an SSL extractor needs its weights (none were saved)")
        ext = build_ssl_extractor(SSLConfig.from_dict(desc["config"], path), state_dict,
                                  get_field(desc, "checkpoint_hash", str, path, FeatureError, "SSL extractor",
                                            default=None, allow_none=True))
        return ext.to(device)
    if kind == "whisper":
        from .whisper import WhisperConfig, WhisperExtractor

        cfg = WhisperConfig.from_dict(desc["config"], path)
        if str(device).startswith("cuda"):
            cfg = replace(cfg, device="cuda")
        return WhisperExtractor(cfg)
    raise FeatureError(f"{path}: unknown feature extractor type {safe_text(repr(kind), 40)} (known: mfcc, ssl, whisper)")
