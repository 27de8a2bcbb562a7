"""Checks shared by every versioned speechtok file: the ``format`` tag and ``format_version``.

Each artefact (model config, shard index, feature store, k-means, BPE, checkpoint, ...) carries
``{"format": "<tag>", "format_version": N}``; readers accept versions ``1..N`` of their tag and
refuse anything else with a message naming the file and what it is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

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
