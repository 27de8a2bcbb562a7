"""Streaming causal RVQ codec (Mimi architecture): configs, model, tokenizer, streaming, Mimi import.

Names load lazily (``import speechtok.codec`` does not import torch):

    >>> from speechtok.codec import CodecTokenizer, preset
    >>> tok = CodecTokenizer.from_config(preset("speechtok-16k-12.5hz"), seed=0)
    >>> codes = tok.encode(wav, sample_rate=16000)          # Codes [B, K, T]
    >>> with tok.stream(batch_size=1) as s:
    ...     frames = s.encode(chunk)                         # int64 [1, K, t]
"""
from __future__ import annotations

_LAZY = {
    "CodecConfig": "config:CodecConfig",
    "SEANetConfig": "config:SEANetConfig",
    "TransformerConfig": "config:TransformerConfig",
    "QuantizerSpec": "config:QuantizerSpec",
    "PRESETS": "config:PRESETS",
    "preset": "config:preset",
    "config_from_dict": "config:config_from_dict",
    "build_codec": "build:build_codec",
    "CodecModel": "model:CodecModel",
    "CodecOutput": "model:CodecOutput",
    "EncoderState": "model:EncoderState",
    "DecoderState": "model:DecoderState",
    "CodecStream": "streaming:CodecStream",
    "CodecTokenizer": "tokenizer:CodecTokenizer",
    "load_codec_dir": "tokenizer:load_codec_dir",
    "load_hf_mimi_dir": "mimi_import:load_hf_mimi_dir",
    "convert_hf_mimi_state_dict": "mimi_import:convert_hf_mimi_state_dict",
    "config_from_hf_mimi": "mimi_import:config_from_hf_mimi",
    "load_moshi_mimi": "moshi_import:load_moshi_mimi",
    "convert_moshi_mimi_state_dict": "moshi_import:convert_moshi_mimi_state_dict",
}

__all__ = list(_LAZY)

from speechtok._lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
