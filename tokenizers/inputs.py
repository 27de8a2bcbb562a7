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

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au", ".sph")
PathLike = Union[str, os.PathLike]


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


def read_list(paths: Iterable[Union[PathLike, AudioItem]], base: Optional[Path] = None) -> list[AudioItem]:
    """Paths (relative ones to ``base`` or the cwd) or ready `AudioItem` s; ids are file stems."""
    base = Path.cwd() if base is None else base
    out = []
    for p in paths:
        if isinstance(p, AudioItem):
            out.append(p)
        else:
            full = _resolve(base, str(p))
            out.append(AudioItem(id=Path(full).stem, path=full))
    return out


def _manifest_item(base: Path, rec: dict, where: str) -> AudioItem:
    if "id" not in rec or "audio" not in rec:
        raise InputError(f"{where}: manifest record needs 'id' and 'audio', has {sorted(rec)}")
    return AudioItem(id=str(rec["id"]), path=_resolve(base, str(rec["audio"])),
                     duration=None if rec.get("duration") is None else float(rec["duration"]),
                     text=rec.get("text"), speaker=None if rec.get("speaker") is None else str(rec["speaker"]))


def _lhotse_cut_item(base: Path, rec: dict, where: str) -> AudioItem:
    rec_ = rec.get("recording") or {}
    sources = [s for s in rec_.get("sources", []) if s.get("type", "file") == "file"]
    if not sources:
        raise InputError(f"{where}: lhotse cut {rec.get('id')!r} has no file source in its recording")
    sup = (rec.get("supervisions") or [{}])[0]
    start = float(rec.get("start", 0.0))
    duration = None if rec.get("duration") is None else float(rec["duration"])
    return AudioItem(id=str(rec["id"]), path=_resolve(base, str(sources[0]["source"])), start=start,
                     end=None if duration is None else start + duration, duration=duration,
                     text=sup.get("text"), speaker=None if sup.get("speaker") is None else str(sup["speaker"]))


def _lhotse_recording_item(base: Path, rec: dict, where: str) -> AudioItem:
    sources = [s for s in rec.get("sources", []) if s.get("type", "file") == "file"]
    if not sources:
        raise InputError(f"{where}: lhotse recording {rec.get('id')!r} has no file source")
    return AudioItem(id=str(rec["id"]), path=_resolve(base, str(sources[0]["source"])),
                     duration=None if rec.get("duration") is None else float(rec["duration"]))


def read_manifest(path: PathLike) -> list[AudioItem]:
    """A speechtok JSONL manifest or a lhotse cut/recording manifest (format found per record)."""
    path = Path(path).resolve()
    base = path.parent
    out = []
    for n, rec in _iter_jsonl(path):
        where = f"{path}:{n}"
        if "recording" in rec:
            out.append(_lhotse_cut_item(base, rec, where))
        elif "sources" in rec:
            out.append(_lhotse_recording_item(base, rec, where))
        else:
            out.append(_manifest_item(base, rec, where))
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
            items = read_manifest(path)
        elif path.suffix.lower() in {e.lower() for e in extensions}:
            items = read_list([path])
        else:  # a list file: one path a line
            with _open_text(path) as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
            items = read_list(lines, base=path.resolve().parent)
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise InputError(f"duplicate id {it.id!r}: {seen[it.id]} and {it.path}; ids must be unique")
        seen[it.id] = it.path
    return items


def probe_duration(item: AudioItem) -> Optional[float]:
    """Seconds of audio the item covers (from the file header when not given); None if unreadable."""
    if item.duration is not None:
        return item.duration
    try:
        import soundfile as sf

        info = sf.info(item.path)
        end = info.frames / info.samplerate if item.end is None else min(item.end, info.frames / info.samplerate)
        return max(0.0, end - item.start)
    except Exception:
        return None
