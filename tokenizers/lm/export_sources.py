"""What `speechtok.lm.export` reads: shard directories and ``.stok`` codes files, one utterance at a time.

A source is a preprocessing output directory (``job.json`` + ``shards/``, see `speechtok.shards`),
a ``.stok`` codes file, or a directory searched recursively for ``.stok`` files (sorted; temp files
of interrupted writes skipped). `scan_sources` reads only metadata (job files, safetensors headers)
and checks that every source holds codes of one model (same model id, rates and codebooks), naming
the first file that does not; `iter_utterances` then yields one `Utterance` at a time, holding at
most one shard (or one codes file) in memory.

Utterance ids: a shard item keeps its id; a codes file's item is its path relative to the directory
given (without ``.stok``; the file stem for a file given directly), with ``:<b>`` appended for item
``b`` of a file holding several. Ids are not checked for uniqueness across sources (the lhotse
writer, whose storage is keyed by id, refuses duplicates).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from ..atomic import is_temp_file
from ..codes import Codes, CodesError

PathLike = Union[str, os.PathLike]


class ExportError(ValueError):
    """A source, an option or the output directory of an export is unusable (``"<file>: <problem>"``)."""


class ExportUsageError(ExportError):
    """Misuse: bad options, or an output directory the export may not write (nothing was read or written)."""


@dataclass(frozen=True, eq=False)
class Utterance:
    """One utterance of a source.

    Attributes:
        id: its key (see the module docstring).
        codes: `Codes` with ``B=1``: ``codes.codes`` int64 ``[1, K, T]`` (no padding), optional
            ``durations`` ``[1, T]`` (grid frames per token), ``audio_lengths`` ``[1]`` (samples).
        text, speaker: transcript and speaker when the source records them, else None.
        seconds: duration of the audio in seconds.
        audio_path: the audio file it was encoded from, when recorded (not checked to exist).
        start, end: the segment of ``audio_path`` in seconds (0 and None: the whole file).
        origin: the file it was read from (shard safetensors or ``.stok``), for messages.
    """

    id: str
    codes: Codes
    text: Optional[str]
    speaker: Optional[str]
    seconds: float
    audio_path: Optional[str]
    start: float
    end: Optional[float]
    origin: str


@dataclass(frozen=True)
class SourceInfo:
    """What every source shares (from metadata only).

    ``codebook_sizes`` are those exported (the first ``codebooks`` when given); ``fingerprint`` is a
    sha256 over the paths, sizes and mtimes of every file read, so a changed source is noticed.
    """

    model_id: str
    codebook_sizes: tuple[int, ...]
    frame_rate: float
    sample_rate: int
    n_semantic: int
    fingerprint: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class _Entry:
    kind: str  # "shards" | "stok"
    path: Path
    id: str  # id base of a codes file ("" for shard directories)


def _stat(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _expand(sources: Sequence[PathLike]) -> list[_Entry]:
    from ..codesfile import EXTENSION
    from ..shards import JOB_FILE

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise ExportError("no sources given")
    entries = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            if (p / JOB_FILE).is_file():
                entries.append(_Entry("shards", p, ""))
                continue
            found = sorted(f for f in p.rglob(f"*{EXTENSION}") if f.is_file() and not is_temp_file(f))
            if not found:
                raise ExportError(f"{p}: neither a shard directory (no {JOB_FILE}) nor a folder of {EXTENSION} files")
            entries += [_Entry("stok", f, f.relative_to(p).with_suffix("").as_posix()) for f in found]
        elif p.is_file():
            if p.suffix != EXTENSION:
                raise ExportError(f"{p}: not a {EXTENSION} codes file or a shard directory")
            entries.append(_Entry("stok", p, p.stem))
        else:
            raise ExportError(f"{p}: no such file or directory")
    return entries


def _describe(entry: _Entry) -> tuple[dict, list]:
    """(model metadata, files read for the fingerprint) of one entry; raises `ExportError`."""
    from ..codesfile import read_codes_metadata
    from ..shards import SHARD_DIR, ShardError, ShardSet

    if entry.kind == "stok":
        try:
            m = read_codes_metadata(entry.path)
        except CodesError as e:
            raise ExportError(str(e)) from e
        return {"model_id": m["model_id"], "codebook_sizes": tuple(m["codebook_sizes"]),
                "frame_rate": float(m["frame_rate"]), "sample_rate": int(m["sample_rate"]),
                "n_semantic": int(m.get("n_semantic", 0))}, [_stat(entry.path)]
    try:
        s = ShardSet(entry.path)
    except (ShardError, KeyError, TypeError, ValueError) as e:
        raise ExportError(str(e) if str(e).startswith(str(entry.path)) else f"{entry.path}: {e}") from e
    if not s.complete:
        raise ExportError(f"{entry.path}: preprocessing is not finished ({len(s.shards)} of "
                          f"{s.job.get('num_shards')} shards done); rerun speechtok preprocess to complete it")
    files = [_stat(entry.path / "job.json")]
    for n, idx in s.shards.items():
        files += [_stat(idx), _stat(entry.path / SHARD_DIR / f"{idx.stem}.safetensors")]
    return {"model_id": s.model_id, "codebook_sizes": tuple(s.codebook_sizes), "frame_rate": s.frame_rate,
            "sample_rate": s.sample_rate, "n_semantic": s.n_semantic}, files


def scan_sources(sources: Sequence[PathLike], codebooks: Optional[int] = None) -> tuple[SourceInfo, list[_Entry]]:
    """Check ``sources`` (metadata only) and plan the read: ``(SourceInfo, entries)``.

    All must share the model id, frame and sample rate, and codebook sizes (with ``codebooks``:
    each must have at least that many, the first ``codebooks`` equal). Raises `ExportError`.
    """
    entries = _expand(sources)
    if codebooks is not None and codebooks < 1:
        raise ExportError(f"codebooks={codebooks}: must be >= 1")
    first, first_path, digest = None, None, hashlib.sha256()
    for e in entries:
        meta, files = _describe(e)
        digest.update(json.dumps(files).encode())
        sizes = meta["codebook_sizes"]
        if codebooks is not None and len(sizes) < codebooks:
            raise ExportError(f"{e.path}: has {len(sizes)} codebooks, fewer than codebooks={codebooks}")
        meta["codebook_sizes"] = sizes[:codebooks] if codebooks else sizes
        if first is None:
            first, first_path = meta, e.path
            continue
        for key in ("model_id", "frame_rate", "sample_rate", "codebook_sizes"):
            if meta[key] != first[key]:
                hint = " (pass codebooks=K to keep the first K)" if key == "codebook_sizes" else ""
                raise ExportError(f"{e.path}: {key} {meta[key]!r} differs from {first[key]!r} of {first_path}: one "
                                  f"export holds the codes of one model{hint}")
    K = len(first["codebook_sizes"])
    info = SourceInfo(model_id=first["model_id"], codebook_sizes=tuple(first["codebook_sizes"]),
                      frame_rate=first["frame_rate"], sample_rate=first["sample_rate"],
                      n_semantic=min(first["n_semantic"], K), fingerprint=digest.hexdigest(),
                      sources=tuple(str(Path(s).resolve()) for s in
                                    ([sources] if isinstance(sources, (str, os.PathLike)) else sources)))
    return info, entries


def _opt(value) -> Optional[str]:
    return None if value is None else str(value)


def _checked(codes: Codes, info: SourceInfo, origin: str, uid: str) -> Codes:
    K = len(info.codebook_sizes)
    if codes.num_codebooks > K:
        codes = codes.take_codebooks(K)
    try:
        codes.validate()
    except CodesError as e:
        raise ExportError(f"{origin}: item {uid!r}: {e}") from e
    return codes


def iter_utterances(entries: Sequence[_Entry], info: SourceInfo) -> Iterator[Utterance]:
    """The utterances of ``entries`` (from `scan_sources`) in order, one shard/file in memory at a time."""
    from ..codesfile import read_codes
    from ..shards import SHARD_DIR, ShardError, ShardSet

    for e in entries:
        if e.kind == "shards":
            s = ShardSet(e.path)
            for number in sorted(s.shards):
                origin = str(e.path / SHARD_DIR / f"{s.shards[number].stem}.safetensors")
                try:
                    items = s.load_shard(number)
                except (ShardError, KeyError, TypeError, ValueError, RuntimeError) as err:
                    raise ExportError(str(err) if str(err).startswith(str(e.path)) else f"{origin}: {err}") from err
                for it in items:
                    codes = _checked(s.to_codes(it), info, origin, it.id)
                    m = it.meta
                    yield Utterance(id=str(it.id), codes=codes, text=_opt(m.get("text")),
                                    speaker=_opt(m.get("speaker")), seconds=float(codes.seconds()[0]),
                                    audio_path=_opt(m.get("path")), start=float(m.get("start") or 0.0),
                                    end=None if m.get("end") is None else float(m["end"]), origin=origin)
                del items
            continue
        try:
            batch, meta = read_codes(e.path, expect_model_id=info.model_id)
        except CodesError as err:
            raise ExportError(str(err)) from err
        items = batch.unbatch()
        for b, codes in enumerate(items):
            uid = e.id if len(items) == 1 else f"{e.id}:{b}"
            codes = _checked(codes, info, str(e.path), uid)
            yield Utterance(id=uid, codes=codes, text=_opt(meta.get("text")), speaker=_opt(meta.get("speaker")),
                            seconds=float(codes.seconds()[0]), audio_path=_opt(meta.get("source")), start=0.0,
                            end=None, origin=str(e.path))
