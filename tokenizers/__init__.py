"""speechtok: speech to discrete tokens and back.

``import speechtok`` is light (no torch import); names below load on first use.

    >>> import speechtok
    >>> tok = speechtok.load()                       # the built-in default model
    >>> codes = tok.encode(wav, sample_rate=sr)      # Codes [B, K, T]
    >>> audio = tok.decode(codes)                    # Waveform [B, C, S] + lengths
"""
from __future__ import annotations

__version__ = "0.1.0"

# public name -> "submodule:attribute"
_LAZY = {
    "Codes": "codes:Codes",
    "CodesError": "codes:CodesError",
    "Waveform": "protocol:Waveform",
    "Tokenizer": "protocol:Tokenizer",
    "BaseTokenizer": "protocol:BaseTokenizer",
    "load": "registry:load",
    "models": "registry:models",
    "DEFAULT_MODEL": "registry:DEFAULT_MODEL",
    "ModelLoadError": "registry:ModelLoadError",
    "load_audio": "audio:load_audio",
    "save_audio": "audio:save_audio",
    "AudioError": "audio:AudioError",
    "save_codes": "codesfile:save_codes",
    "load_codes": "codesfile:load_codes",
    "CodesFileError": "codesfile:CodesFileError",
    "TokenLayout": "lm:TokenLayout",
    "encode_files": "files:encode_files",
    "decode_files": "files:decode_files",
    "preprocess": "preprocessing:preprocess",
    "PreprocessConfig": "preprocessing:PreprocessConfig",
    "PreprocessResult": "preprocessing:PreprocessResult",
    "ShardDataset": "shards:ShardDataset",
    "ShardSet": "shards:ShardSet",
    "read_inputs": "inputs:read_inputs",
    "AudioItem": "inputs:AudioItem",
}

__all__ = ["__version__", *_LAZY]

from ._lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
