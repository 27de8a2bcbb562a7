"""Codes files (``.stok``): one `Codes` per file, safetensors tensors + JSON metadata. Never pickle.

Layout (safetensors):
    tensors   ``codes`` int16/int32 ``[B, K, T]`` (-1 at padding; the narrowest type that holds the
              codebook sizes), ``lengths`` int64 ``[B]``, optional ``durations`` int32 ``[B, T]``,
              optional ``audio_lengths`` int64 ``[B]``.
    metadata  ``{"speechtok": "<JSON>"}`` with ``format``, ``format_version``, ``model_id``,
              ``sample_rate``, ``frame_rate``, ``codebook_sizes``, ``n_semantic``, ``source``,
              ``speechtok_version`` (and anything passed as ``extra``).

A file is self-describing (decodable and timeable alone). Reading a file of a newer format
version, or of another model than expected, fails with a message saying which.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .atomic import atomic_path
from .codes import Codes, CodesError

PathLike = Union[str, os.PathLike]
FORMAT = "speechtok.codes"
FORMAT_VERSION = 1
EXTENSION = ".stok"


class CodesFileError(CodesError):
    """A codes file is unreadable, of an unknown format/version, or from another model."""


def _storage_dtype(codebook_sizes: tuple[int, ...]) -> torch.dtype:
    return torch.int16 if max(codebook_sizes, default=1) <= 32767 else torch.int32


def save_codes(path: PathLike, codes: Codes, source: Optional[str] = None,
               extra: Optional[dict[str, Any]] = None) -> Path:
    """Write ``codes`` to ``path`` atomically (validated first). Returns the path."""
    from safetensors.torch import save_file

    from . import __version__

    codes.validate()
    path = Path(path)
    tensors = {
        "codes": codes.codes.to(_storage_dtype(codes.codebook_sizes)).cpu().contiguous(),
        "lengths": codes.lengths.cpu().contiguous(),
    }
    if codes.durations is not None:
        tensors["durations"] = codes.durations.to(torch.int32).cpu().contiguous()
    if codes.audio_lengths is not None:
        tensors["audio_lengths"] = codes.audio_lengths.long().cpu().contiguous()
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model_id": codes.model_id,
        "sample_rate": int(codes.sample_rate), "frame_rate": float(codes.frame_rate),
        "codebook_sizes": list(codes.codebook_sizes), "n_semantic": int(codes.n_semantic),
        "lengths": codes.lengths.tolist(), "source": source, "speechtok_version": __version__,
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"speechtok": json.dumps(meta)})
    return path


def read_codes_metadata(path: PathLike) -> dict[str, Any]:
    """The JSON metadata of a codes file, checked for format and version (no tensors read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CodesFileError(f"{path}: no such codes file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("speechtok")
    except Exception as e:
        raise CodesFileError(f"{path}: not a speechtok codes file (unreadable safetensors: {e})") from e
    if raw is None:
        raise CodesFileError(f"{path}: not a speechtok codes file (no 'speechtok' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CodesFileError(f"{path}: corrupt codes metadata ({e})") from e
    if meta.get("format") != FORMAT:
        raise CodesFileError(f"{path}: not a speechtok codes file (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CodesFileError(f"{path}: invalid codes format version {version!r}")
    if version > FORMAT_VERSION:
        raise CodesFileError(
            f"{path}: codes format version {version} was written by a newer speechtok "
            f"({meta.get('speechtok_version')}); this one reads versions <= {FORMAT_VERSION}: upgrade speechtok")
    return meta


def load_codes(path: PathLike, expect_model_id: Optional[str] = None, device: str = "cpu") -> Codes:
    """Read a codes file. With ``expect_model_id``, fail unless the file was made by that model."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_codes_metadata(path)
    if expect_model_id is not None and meta["model_id"] != expect_model_id:
        raise CodesFileError(f"{path}: codes were made by model {meta['model_id']!r}, not {expect_model_id!r}")
    try:
        t = load_file(str(path), device=device)
    except Exception as e:
        raise CodesFileError(f"{path}: corrupt codes tensors ({e})") from e
    if "codes" not in t or "lengths" not in t:
        raise CodesFileError(f"{path}: codes file lacks 'codes' or 'lengths' tensors")
    codes = Codes(
        codes=t["codes"].long(), lengths=t["lengths"].long(), frame_rate=float(meta["frame_rate"]),
        codebook_sizes=tuple(int(s) for s in meta["codebook_sizes"]), sample_rate=int(meta["sample_rate"]),
        model_id=str(meta["model_id"]), n_semantic=int(meta.get("n_semantic", 0)),
        durations=t["durations"].long() if "durations" in t else None,
        audio_lengths=t["audio_lengths"].long() if "audio_lengths" in t else None,
    )
    try:
        return codes.validate()
    except CodesError as e:
        raise CodesFileError(f"{path}: {e}") from e
