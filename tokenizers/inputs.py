"""Input readers for preprocessing: a directory, a list of files, or a manifest -> `AudioItem` list.

Supported sources (`read_inputs`):

- a directory: every audio file below it (recursively, sorted); the id is the path relative to
  the directory without its extension (``"spk1/utt3"``);
- a list/tuple of paths (or of `AudioItem`); the id is the file name without extension;
- a text file (``.txt``/``.lst``): one path a line, relative to the list file;
- a speechtok manifest (``.jsonl``/``.jsonl.gz``, the ``shared/data`` schema): one JSON object a
  line ``{"id", "audio" (path relative to the manifest), "text", "speaker", "source",
  "sample_rate", "duration"}``;
- a lhotse cut manifest (``.jsonl``/``.jsonl.gz`` of cuts with a ``"recording"`` holding file
  ``"sources"``; ``start``/``duration`` select the segment, the first supervision gives text/speaker);
- a Hugging Face ``datasets.Dataset`` whose audio column holds local file paths (see `from_hf_dataset`).

Ids must be unique: they key the shards, resume and the index.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from .formats import get_field, safe_text

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au", ".sph")
PathLike = Union[str, os.PathLike]
MAX_ITEM_SECONDS = 7 * 24 * 3600.0  # an item (a whole file or a cut) of at most a week
OFFSET_TOLERANCE = 0.05  # seconds a cut may run past its recording's end (rounding in lhotse manifests)


class InputError(ValueError):
    """An input source (directory, list or manifest) cannot be read; names the file and the line."""


@dataclass(frozen=True)
class AudioItem:
    """One utterance to tokenize.

    Attributes:
        id: unique key of the item (shards and the index are keyed by it).
        path: absolute path of the audio file.
        start: offset into the file in seconds (lhotse cuts; 0 for whole files).
        end: end of the segment in seconds (lhotse cuts); ``None``: the end of the file.
        duration: seconds of audio the item covers, if known (used to plan shards and batches).
        text, speaker: optional transcript and speaker, carried into the shard index.
    """

    id: str
    path: str
    start: float = 0.0
    end: Optional[float] = None
    duration: Optional[float] = None
    text: Optional[str] = None
    speaker: Optional[str] = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> "AudioItem":
        return cls(id=str(d["id"]), path=str(d["path"]), start=float(d.get("start", 0.0)),
                   end=None if d.get("end") is None else float(d["end"]),
                   duration=None if d.get("duration") is None else float(d["duration"]),
                   text=d.get("text"), speaker=d.get("speaker"))


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    n = 0
    try:
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not valid JSON ({e})") from e
                if not isinstance(rec, dict):
                    raise InputError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
                yield n, rec
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise InputError(f"{path}:{n + 1}: unreadable manifest ({e})") from e


def _resolve(base: Path, p: str) -> str:
    q = Path(os.path.expanduser(p))
    return str(q if q.is_absolute() else (base / q).resolve())


def read_directory(directory: PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[AudioItem]:
    """Every audio file below ``directory`` (sorted); ids are relative paths without extension."""
    root = Path(directory).resolve()
    exts = {e.lower() for e in extensions}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                   and not p.name.startswith("."))
    return [AudioItem(id=p.relative_to(root).with_suffix("").as_posix(), path=str(p)) for p in files]


def _must_exist(path: str, where: str) -> str:
    if not os.path.isfile(path):
        raise InputError(f"{where}: audio file {safe_text(path)} does not exist")
    return path


def read_list(paths: Iterable[Union[PathLike, AudioItem]], base: Optional[Path] = None,
              where: Optional[Sequence[str]] = None) -> list[AudioItem]:
    """Paths (relative ones to ``base`` or the cwd) or ready `AudioItem` s; ids are file stems.

    Every path must be an existing file (``where[i]`` names the list line in the error).
    """
    base = Path.cwd() if base is None else base
    out = []
    for i, p in enumerate(paths):
        if isinstance(p, AudioItem):
            out.append(p)
        else:
            full = _resolve(base, str(p))
            _must_exist(full, where[i] if where else safe_text(full))
            out.append(AudioItem(id=Path(full).stem, path=full))
    return out


def _get(rec: dict, key: str, kind, where: str, what: str, **kw):
    return get_field(rec, key, kind, where, InputError, what, **kw)


def _seconds(rec: dict, key: str, where: str, what: str, positive: bool, default=None) -> Optional[float]:
    """A finite number of seconds in [0, MAX_ITEM_SECONDS] (> 0 when ``positive``), or ``default``."""
    v = _get(rec, key, float, where, what, lo=0.0, hi=MAX_ITEM_SECONDS, default=default, allow_none=True)
    if v is None:
        return default
    if positive and v <= 0:
        raise InputError(f"{where}: {what} {key!r}={v!r} must be > 0")
    return v


def _item_id(rec: dict, where: str, what: str) -> str:
    v = _get(rec, "id", object, where, what)
    if isinstance(v, bool) or not isinstance(v, (str, int)) or v == "":
        raise InputError(f"{where}: {what} 'id' must be a non-empty string, got {safe_text(repr(v), 60)}")
    return str(v)


def _opt_str(rec: dict, key: str, where: str, what: str, ints: bool = False) -> Optional[str]:
    v = rec.get(key)
    if v is None:
        return None
    if isinstance(v, str) or ints and isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise InputError(f"{where}: {what} {key!r} must be a string, got {safe_text(repr(v), 60)}")


def _file_source(base: Path, rec: dict, where: str, what: str) -> str:
    sources = _get(rec, "sources", list, where, what)
    files = []
    for s in sources:
        if not isinstance(s, dict):
            raise InputError(f"{where}: {what} 'sources' must hold JSON objects, got {safe_text(repr(s), 60)}")
        if _get(s, "type", str, where, f"{what} source", default="file") == "file":
            files.append(_get(s, "source", str, where, f"{what} source"))
    if not files:
        raise InputError(f"{where}: {what} has no file source")
    return _resolve(base, files[0])


def _manifest_item(base: Path, rec: dict, where: str) -> AudioItem:
    what = "manifest record"
    if "id" not in rec or "audio" not in rec:
        raise InputError(f"{where}: {what} needs 'id' and 'audio', has {safe_text(sorted(rec))}")
    return AudioItem(id=_item_id(rec, where, what), path=_resolve(base, _get(rec, "audio", str, where, what)),
                     duration=_seconds(rec, "duration", where, what, positive=True),
                     text=_opt_str(rec, "text", where, what), speaker=_opt_str(rec, "speaker", where, what, ints=True))


def _lhotse_cut_item(base: Path, rec: dict, where: str) -> AudioItem:
    what = "lhotse cut"
    cid = _item_id(rec, where, what)
    recording = _get(rec, "recording", dict, where, what)
    path = _file_source(base, recording, where, "lhotse cut recording")
    sups = _get(rec, "supervisions", list, where, what, default=None, allow_none=True) or [{}]
    sup = sups[0]
    if not isinstance(sup, dict):
        raise InputError(f"{where}: {what} supervisions must be JSON objects, got {safe_text(repr(sup), 60)}")
    start = _seconds(rec, "start", where, what, positive=False, default=0.0)
    duration = _seconds(rec, "duration", where, what, positive=True)
    rec_dur = _seconds(recording, "duration", where, "lhotse cut recording", positive=True)
    end = None if duration is None else start + duration
    if rec_dur is not None and (start >= rec_dur or (end or 0.0) > rec_dur + OFFSET_TOLERANCE):
        raise InputError(f"{where}: {what} {safe_text(cid)!r} segment [{start}, {end}] s lies beyond its "
                         f"recording ({rec_dur} s)")
    return AudioItem(id=cid, path=path, start=start, end=end, duration=duration,
                     text=_opt_str(sup, "text", where, "lhotse supervision"),
                     speaker=_opt_str(sup, "speaker", where, "lhotse supervision", ints=True))


def _lhotse_recording_item(base: Path, rec: dict, where: str) -> AudioItem:
    what = "lhotse recording"
    return AudioItem(id=_item_id(rec, where, what), path=_file_source(base, rec, where, what),
                     duration=_seconds(rec, "duration", where, what, positive=True))


def _file_seconds(path: str) -> Optional[float]:
    """Seconds of audio in the file, from its header; None if unreadable."""
    try:
        import soundfile as sf

        info = sf.info(path)
        return info.frames / info.samplerate
    except Exception:  # an unreadable file is reported per item when it is loaded
        return None


def _check_items(path: Path, items: Sequence[AudioItem], lines: Sequence[int]) -> None:
    """Unique ids, existing files, cut segments within their file (header read once per file)."""
    first: dict[str, int] = {}
    for it, n in zip(items, lines):
        if it.id in first:
            raise InputError(f"{path}:{n}: duplicate id {safe_text(it.id)!r} (first on line {first[it.id]}); "
                             "ids must be unique")
        first[it.id] = n
    lengths: dict[str, Optional[float]] = {}
    for it, n in zip(items, lines):
        _must_exist(it.path, f"{path}:{n}")
        if it.start > 0 or it.end is not None:
            if it.path not in lengths:
                lengths[it.path] = _file_seconds(it.path)
            secs = lengths[it.path]
            if secs is not None and (it.start >= secs or (it.end or 0.0) > secs + OFFSET_TOLERANCE):
                raise InputError(f"{path}:{n}: segment [{it.start}, {it.end}] s of {safe_text(it.id)!r} lies "
                                 f"beyond the end of {safe_text(it.path)} ({secs:.3f} s)")


def read_manifest(path: PathLike) -> list[AudioItem]:
    """A speechtok JSONL manifest or a lhotse cut/recording manifest (format found per record).

    Every record is checked (types, ranges, that its audio file exists, that a cut lies within its
    file); the first bad one raises `InputError` naming the manifest and line.
    """
    path = Path(path).resolve()
    base = path.parent
    out, lines = [], []
    for n, rec in _iter_jsonl(path):
        where = f"{path}:{n}"
        if "recording" in rec:
            out.append(_lhotse_cut_item(base, rec, where))
        elif "sources" in rec:
            out.append(_lhotse_recording_item(base, rec, where))
        else:
            out.append(_manifest_item(base, rec, where))
        lines.append(n)
    _check_items(path, out, lines)
    return out


def from_hf_dataset(ds: Any, audio_column: str = "audio", id_column: Optional[str] = None,
                    text_column: Optional[str] = "text") -> list[AudioItem]:
    """Items from a Hugging Face ``datasets.Dataset`` whose audio column refers to local files.

    The audio column is read undecoded (``Audio(decode=False)``) and its ``"path"`` used; rows
    without a local path are an error (in-memory audio: save it to files first). Ids come from
    ``id_column`` (default: an ``"id"`` column if there is one, else the row number).
    """
    try:
        from datasets import Audio
    except ImportError as e:  # pragma: no cover - optional backend
        raise ImportError("reading a Hugging Face dataset needs `pip install 'speechtok[hf]'`") from e
    if audio_column not in ds.column_names:
        raise InputError(f"dataset has no audio column {audio_column!r}; columns: {ds.column_names}")
    if id_column is None and "id" in ds.column_names:
        id_column = "id"
    ds = ds.cast_column(audio_column, Audio(decode=False))
    out = []
    for i, row in enumerate(ds):
        a = row[audio_column]
        p = a.get("path") if isinstance(a, dict) else a
        if not p or not os.path.isfile(p):
            raise InputError(f"dataset row {i}: audio {p!r} is not a local file")
        rid = str(row[id_column]) if id_column else f"{i:08d}"
        text = row.get(text_column) if text_column else None
        if text is not None and not isinstance(text, str):
            text = str(text)
        out.append(AudioItem(id=rid, path=str(Path(p).resolve()), text=text))
    return out


def read_inputs(source: Any, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[AudioItem]:
    """Any supported source -> a list of `AudioItem` with unique ids (see the module docstring)."""
    if isinstance(source, (list, tuple)):
        items = read_list(source)
    elif hasattr(source, "column_names") and hasattr(source, "cast_column"):
        items = from_hf_dataset(source)
    else:
        path = Path(os.path.expanduser(str(source)))
        if path.is_dir():
            items = read_directory(path, extensions)
        elif not path.is_file():
            raise InputError(f"{path}: no such file or directory")
        elif path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
            return read_manifest(path)  # checks its ids itself, naming the lines
        elif path.suffix.lower() in {e.lower() for e in extensions}:
            items = read_list([path])
        else:  # a list file: one path a line
            with _open_text(path) as f:
                numbered = [(n, ln.strip()) for n, ln in enumerate(f, 1) if ln.strip() and not ln.startswith("#")]
            items = read_list([ln for _, ln in numbered], base=path.resolve().parent,
                              where=[f"{path}:{n}" for n, _ in numbered])
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise InputError(f"duplicate id {safe_text(it.id)!r}: {safe_text(seen[it.id])} and "
                             f"{safe_text(it.path)}; ids must be unique")
        seen[it.id] = it.path
    return items


def probe_duration(item: AudioItem) -> Optional[float]:
    """Seconds of audio the item covers (from the file header when not given); None if unreadable."""
    if item.duration is not None:
        return item.duration
    secs = _file_seconds(item.path)
    if secs is None:
        return None
    return max(0.0, (secs if item.end is None else min(item.end, secs)) - item.start)
