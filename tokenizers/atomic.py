"""Atomic file writes: write to a temp file in the same folder, then ``os.replace`` onto the target.

An interrupted run (exception, Ctrl-C, kill -9) never leaves a truncated output at the target path;
at worst a hidden ``.<name>.tmp-*`` file is left behind, which is never mistaken for an output.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def _default_mode() -> int:
    """0o666 less the process umask: what a plain ``open(path, "w")`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


TEMP_MARK = ".tmp-"


def is_temp_file(path: PathLike) -> bool:
    """True for a temp file of `atomic_path` (``.<name>.tmp-*``): in flight or left by a crash,
    never an input or an output."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARK in name


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any exception the temp file is removed and ``path`` is left untouched. ``suffix`` is
    appended to the temp name (some writers pick the format from the extension, e.g. ``.flac``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    mode = _default_mode()
    os.chmod(tmp, mode)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.chmod(tmp, mode)  # again: some writers (safetensors) recreate the file as 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
