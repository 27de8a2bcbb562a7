"""Checks shared by every versioned speechtok file: the ``format`` tag and ``format_version``.

Each artefact (model config, shard index, feature store, k-means, BPE, checkpoint, ...) carries
``{"format": "<tag>", "format_version": N}``; readers accept versions ``1..N`` of their tag and
refuse anything else with a message naming the file and what it is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]


def check_format(meta: dict, path: PathLike, fmt: str, version: int, error: type[Exception], what: str) -> dict:
    """Raise ``error`` unless ``meta`` is ``fmt`` at a version in ``[1, version]``; return ``meta``.

    ``format_version`` may be an int or a decimal string (safetensors metadata holds strings).
    """
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise error(f"{path}: not a speechtok {what} (format={got!r})")
    raw = meta.get("format_version")
    try:
        v = int(raw)
    except (TypeError, ValueError):
        v = 0
    if v < 1:
        raise error(f"{path}: invalid {what} format version {raw!r}")
    if v > version:
        raise error(f"{path}: {what} format version {v} is newer than this speechtok reads (<= {version}); "
                    "upgrade speechtok")
    return meta


def read_json(path: PathLike, error: type[Exception], what: str) -> dict:
    """Parse a JSON file, raising ``error`` naming the file when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: unreadable {what} ({e})") from e


def read_versioned_json(path: PathLike, fmt: str, version: int, error: type[Exception], what: str) -> dict:
    """`read_json` then `check_format`."""
    return check_format(read_json(path, error, what), path, fmt, version, error, what)


# Upper bounds on sizes read from files, checked before anything is allocated. Generous for real
# use (an hour at 100 Hz is 360,000 frames), far below what would exhaust memory.
MAX_FRAMES = 100 * 3600 * 24          # frames in one item: a day at 100 Hz
MAX_EXPANDED_FRAMES = 100 * 3600 * 24  # frames after undoing durations (dedup/BPE)
MAX_BATCH = 1 << 16
MAX_CODEBOOKS = 1024
MAX_CODEBOOK_SIZE = 1 << 24
MAX_SAMPLE_RATE = 384_000


def get_field(meta: dict, key: str, kind, path: PathLike, error: type[Exception], what: str, *,
              lo=None, hi=None, default=..., allow_none: bool = False):
    """``meta[key]`` checked for type and range; raises ``error`` naming the file, key and value.

    ``kind`` is ``int``, ``float`` (ints accepted), ``str``, ``bool``, ``list`` or ``dict``; bools are
    never taken as numbers. A missing key returns ``default`` when one is given, else raises.
    """
    if not isinstance(meta, dict):
        raise error(f"{path}: {what} is a {type(meta).__name__}, expected a JSON object")
    if key not in meta:
        if default is not ...:
            return default
        raise error(f"{path}: {what} lacks {key!r}")
    value = meta[key]
    if value is None and allow_none:
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else \
        (isinstance(value, int) and not isinstance(value, bool)) if kind is int else isinstance(value, kind)
    if kind is float and ok and (value != value or abs(value) > 1.7e308):  # NaN, or an int no float holds
        ok = False
    if not ok:
        raise error(f"{path}: {what} {key!r} must be {kind.__name__}, got {safe_text(repr(value), 60)}")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise error(f"{path}: {what} {key!r}={value!r} is out of range [{lo}, {hi}]")
    return float(value) if kind is float else value


def safe_text(text, limit: int = 200) -> str:
    """``text`` made safe to print: control characters (terminal escapes, newlines) escaped, length capped."""
    s = str(text)
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s[:limit])
    return out + ("..." if len(s) > limit else "")


MAX_SAFETENSORS_HEADER = 100 << 20  # bytes; safetensors' own limit on a header


def read_safetensors_header(f, size: Optional[int] = None) -> tuple[dict, int]:
    """Parse the header of an open safetensors file ``f`` (u64 little-endian length + JSON), its
    length bounded (by `MAX_SAFETENSORS_HEADER` and, given ``size``, the file): (entries, data offset).
    Raises ValueError for a truncated or implausible header."""
    import struct

    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError("truncated file (no safetensors header)")
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_SAFETENSORS_HEADER or size is not None and n > size - 8:
        raise ValueError(f"implausible safetensors header length {n}")
    header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + n
