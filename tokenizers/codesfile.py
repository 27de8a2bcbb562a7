"""Codes files (``.stok``): one `Codes` per file, safetensors tensors + JSON metadata. Never pickle.

Layout (safetensors):
    tensors   ``codes`` int16/int32 ``[B, K, T]`` (-1 at padding; the narrowest type that holds the
              codebook sizes), ``lengths`` int64 ``[B]``, optional ``durations`` int32 ``[B, T]``,
              optional ``audio_lengths`` int64 ``[B]``.
    metadata  ``{"speechtok": "<JSON>"}`` with ``format``, ``format_version``, ``model_id``,
              ``sample_rate``, ``frame_rate``, ``codebook_sizes``, ``n_semantic``, ``source``,
              ``speechtok_version`` (and anything passed as ``extra``). Optional (written by
              `speechtok.files.encode_files`, absent from older files): ``source_sample_rate`` (Hz),
              ``source_channels`` and ``source_frames`` (samples per channel) of the audio file
              encoded, so decoding can restore its rate and channel count.

A file is self-describing (decodable and timeable alone). Reading a file of a newer format
version, or of another model than expected, fails with a message saying which. Every value a file
holds is checked for type, range and consistency (with the tensors' shapes and dtypes, and the
expanded length against `speechtok.formats.MAX_EXPANDED_FRAMES`) before anything is allocated
from it; a bad one is a one-line `CodesFileError` naming the file and the problem.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from .atomic import atomic_path
from .codes import Codes, CodesError
from .formats import (MAX_BATCH, MAX_CODEBOOK_SIZE, MAX_CODEBOOKS, MAX_EXPANDED_FRAMES, MAX_SAMPLE_RATE,
                      get_field, safe_text)

PathLike = Union[str, os.PathLike]
FORMAT = "speechtok.codes"
FORMAT_VERSION = 1
EXTENSION = ".stok"
MAX_CHANNELS = 256
# frames by which a file's token grid and its audio_lengths may disagree (analysis windows, rounding)
LENGTH_SLACK_FRAMES = 8
# safetensors dtype names each tensor may have (anything else, floats included, is refused)
TENSOR_DTYPES = {"codes": ("I16", "I32", "I64"), "lengths": ("I32", "I64"),
                 "durations": ("I32", "I64"), "audio_lengths": ("I32", "I64")}


class CodesFileError(CodesError):
    """A codes file is unreadable, of an unknown format/version, or from another model."""


def _storage_dtype(codebook_sizes: tuple[int, ...]) -> torch.dtype:
    return torch.int16 if max(codebook_sizes, default=1) <= 32767 else torch.int32


def save_codes(path: PathLike, codes: Codes, source: Optional[str] = None,
               extra: Optional[dict[str, Any]] = None) -> Path:
    """Write ``codes`` to ``path`` atomically (validated first). Returns the path.

    Raises `CodesFileError` naming the file and the cause when it cannot be written (disk full,
    read-only or unwritable folder); no partial file is left.
    """
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
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"speechtok": json.dumps(meta)})
    except OSError as e:
        raise CodesFileError(f"{path}: cannot write codes file ({e.strerror or e})") from e
    except Exception as e:  # safetensors' SafetensorError wraps the I/O error (e.g. disk full)
        if type(e).__name__ != "SafetensorError":
            raise
        raise CodesFileError(f"{path}: cannot write codes file ({e})") from e
    return path


def _check_meta(meta: dict, path: Path) -> dict:
    """Check every value `load_codes` uses (types, ranges, consistency); return ``meta``."""
    def field(key, kind, **kw):
        return get_field(meta, key, kind, path, CodesFileError, "codes metadata", **kw)

    model_id = field("model_id", str)
    if not model_id or len(model_id) > 256:
        raise CodesFileError(f"{path}: codes metadata 'model_id' must be 1-256 characters, got {len(model_id)}")
    field("sample_rate", int, lo=1, hi=MAX_SAMPLE_RATE)
    if field("frame_rate", float, lo=0, hi=MAX_SAMPLE_RATE) <= 0:
        raise CodesFileError(f"{path}: codes metadata 'frame_rate' must be > 0")
    sizes = field("codebook_sizes", list)
    if not 1 <= len(sizes) <= MAX_CODEBOOKS:
        raise CodesFileError(f"{path}: codes metadata 'codebook_sizes' has {len(sizes)} entries, "
                             f"expected 1..{MAX_CODEBOOKS}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_CODEBOOK_SIZE:
            raise CodesFileError(f"{path}: codes metadata 'codebook_sizes' holds {safe_text(repr(s), 40)}, "
                                 f"expected integers in [1, {MAX_CODEBOOK_SIZE}]")
    field("n_semantic", int, lo=0, hi=len(sizes), default=0)
    for key in ("source", "speechtok_version"):
        field(key, str, default=None, allow_none=True)
    field("lengths", list, default=None, allow_none=True)
    field("source_sample_rate", int, lo=1, hi=MAX_SAMPLE_RATE, default=None, allow_none=True)
    field("source_channels", int, lo=1, hi=MAX_CHANNELS, default=None, allow_none=True)
    field("source_frames", int, lo=0, hi=1 << 62, default=None, allow_none=True)
    return meta


def read_codes_metadata(path: PathLike) -> dict[str, Any]:
    """The JSON metadata of a codes file, checked for format, version, types and ranges (no tensors read)."""
    with _open(Path(path)) as (meta, _):
        return meta


@contextlib.contextmanager
def _open(path: Path, device: str = "cpu") -> Iterator[tuple[dict, Any]]:
    """Open a codes file once: yield its checked metadata and the open safetensors handle."""
    from safetensors import safe_open

    if not path.is_file():
        raise CodesFileError(f"{path}: no such codes file")
    try:
        handle = safe_open(str(path), framework="pt", device=device)
    except Exception as e:
        raise CodesFileError(f"{path}: not a speechtok codes file (unreadable safetensors: {e})") from e
    with handle as f:
        yield _parse_metadata((f.metadata() or {}).get("speechtok"), path), f


def _parse_metadata(raw: Optional[str], path: Path) -> dict[str, Any]:
    if raw is None:
        raise CodesFileError(f"{path}: not a speechtok codes file (no 'speechtok' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CodesFileError(f"{path}: corrupt codes metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CodesFileError(f"{path}: not a speechtok codes file (format={safe_text(repr(got), 60)})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CodesFileError(f"{path}: invalid codes format version {safe_text(repr(version), 40)}")
    if version > FORMAT_VERSION:
        raise CodesFileError(
            f"{path}: codes format version {version} was written by a newer speechtok "
            f"({safe_text(meta.get('speechtok_version'), 40)}); this one reads versions <= {FORMAT_VERSION}: "
            "upgrade speechtok")
    return _check_meta(meta, path)


def _check_tensor_headers(f, meta: dict, path: Path) -> None:
    """Names, dtypes and shapes of the tensors (from the header only) against each other and ``meta``."""
    names = set(f.keys())
    if "codes" not in names or "lengths" not in names:
        raise CodesFileError(f"{path}: codes file lacks 'codes' or 'lengths' tensors")
    shapes = {}
    for name in TENSOR_DTYPES.keys() & names:
        sl = f.get_slice(name)
        dtype, shapes[name] = sl.get_dtype(), tuple(sl.get_shape())
        if dtype not in TENSOR_DTYPES[name]:
            raise CodesFileError(f"{path}: tensor {name!r} has dtype {dtype}, expected one of {TENSOR_DTYPES[name]}")
    if len(shapes["codes"]) != 3:
        raise CodesFileError(f"{path}: tensor 'codes' must be [B, K, T], got shape {list(shapes['codes'])}")
    B, K, T = shapes["codes"]
    if B > MAX_BATCH:
        raise CodesFileError(f"{path}: {B} items in one codes file, more than {MAX_BATCH}")
    if K != len(meta["codebook_sizes"]):
        raise CodesFileError(f"{path}: tensor 'codes' has {K} codebooks but metadata 'codebook_sizes' "
                             f"lists {len(meta['codebook_sizes'])}")
    want = {"lengths": (B,), "audio_lengths": (B,), "durations": (B, T)}
    for name, shape in want.items():
        if name in shapes and shapes[name] != shape:
            raise CodesFileError(f"{path}: tensor {name!r} must have shape {list(shape)}, got {list(shapes[name])}")


def _check_item_lengths(codes: Codes, meta: dict, path: Path) -> None:
    """Expanded length bounded, ``audio_lengths`` consistent with the frames (checked before any expansion)."""
    if meta.get("lengths") is not None and meta["lengths"] != codes.lengths.tolist():
        raise CodesFileError(f"{path}: metadata 'lengths' disagrees with the 'lengths' tensor")
    grid = codes.grid_frames()
    padded = codes.batch_size * int(grid.max()) if codes.batch_size else 0  # what `Codes.expand` allocates
    if codes.durations is not None and padded > MAX_EXPANDED_FRAMES:
        raise CodesFileError(f"{path}: durations expand to {padded} frames ({codes.batch_size} items x "
                             f"{int(grid.max())}), more than {MAX_EXPANDED_FRAMES} (a corrupt or hostile file)")
    if codes.audio_lengths is None:
        return
    hop = codes.sample_rate / codes.frame_rate  # samples per grid frame
    for b, (n, samples) in enumerate(zip(grid.tolist(), codes.audio_lengths.tolist())):
        if samples < 0 or n > math.ceil(samples / hop) + LENGTH_SLACK_FRAMES or \
                samples > (n + LENGTH_SLACK_FRAMES) * hop:
            raise CodesFileError(f"{path}: item {b}: audio_lengths {samples} samples does not fit its {n} frames "
                                 f"at {codes.frame_rate} Hz / {codes.sample_rate} Hz")


def load_codes(path: PathLike, expect_model_id: Optional[str] = None, device: str = "cpu") -> Codes:
    """Read a codes file. With ``expect_model_id``, fail unless the file was made by that model.

    Raises `CodesFileError` ("<path>: <problem>") for anything malformed, inconsistent or oversized.
    """
    return read_codes(path, expect_model_id, device)[0]


def read_codes(path: PathLike, expect_model_id: Optional[str] = None,
               device: str = "cpu") -> tuple[Codes, dict[str, Any]]:
    """`load_codes` that also returns the file's checked metadata (one read of the file)."""
    path = Path(path)
    with _open(path, device) as (meta, f):
        if expect_model_id is not None and meta["model_id"] != expect_model_id:
            raise CodesFileError(f"{path}: codes were made by model {safe_text(repr(meta['model_id']), 80)}, "
                                 f"not {expect_model_id!r}")
        try:
            _check_tensor_headers(f, meta, path)
            t = {name: f.get_tensor(name) for name in TENSOR_DTYPES.keys() & set(f.keys())}
        except CodesFileError:
            raise
        except Exception as e:
            raise CodesFileError(f"{path}: corrupt codes tensors ({e})") from e
    try:
        codes = Codes(
            codes=t["codes"].long(), lengths=t["lengths"].long(), frame_rate=float(meta["frame_rate"]),
            codebook_sizes=tuple(meta["codebook_sizes"]), sample_rate=meta["sample_rate"],
            model_id=meta["model_id"], n_semantic=meta.get("n_semantic", 0),
            durations=t["durations"].long() if "durations" in t else None,
            audio_lengths=t["audio_lengths"].long() if "audio_lengths" in t else None,
        ).validate()
    except CodesError as e:
        raise CodesFileError(f"{path}: {e}") from e
    _check_item_lengths(codes, meta, path)
    return codes, meta
