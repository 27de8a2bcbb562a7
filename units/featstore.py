"""Sharded feature files on disk: safetensors shards + one JSON index.

Layout of a feature store directory::

    index.json              {"format": "speechtok.featstore", "format_version": 1, "spec": {...},
                             "dim", "dtype", "num_rows", "shards": [{"file", "rows"}],
                             "utterances": [{"id", "shard", "start", "length"}]}
    shard-00000.safetensors one tensor "feats" [rows, D] (utterances concatenated frame-wise)
    extractor.json          how the features were made (`speechtok.units.api.write_extractor_file`)

Shards are written atomically as they fill; the index last, so a half-written store never looks
complete. Reading memory-maps the shards: `FeatureStore.sample` reads only the rows it draws
(``rows_read`` counts them), so k-means can train on stores far larger than RAM.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from speechtok.formats import get_field, read_safetensors_header, read_versioned_json, safe_text

from .features.base import MAX_FEATURE_DIM, FeatureError, FeatureSpec

FORMAT = "speechtok.featstore"
FORMAT_VERSION = 1
INDEX = "index.json"
_TAGS = {"float32": "F32", "float16": "F16"}  # store dtype -> safetensors dtype tag


class FeatureWriter:
    """Append utterance features ``[T, D]`` and write shards of about ``shard_rows`` rows.

    Use as a context manager; the index is written on successful exit (or by `close`).
    """

    def __init__(self, directory: Union[str, Path], spec: FeatureSpec, shard_rows: int = 262144,
                 dtype: str = "float32"):
        if dtype not in _TAGS:
            raise FeatureError(f"feature store dtype must be float32 or float16, got {dtype!r}")
        self.dir = Path(directory)
        self._created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / INDEX).exists():
            raise FeatureError(f"{self.dir}: already holds a feature store ({INDEX}); pick a new directory")
        self.spec, self.shard_rows, self.dtype = spec, int(shard_rows), np.dtype(dtype)
        self._buf: list[np.ndarray] = []
        self._buf_rows = 0
        self.shards: list[dict] = []
        self.utterances: list[dict] = []
        self._ids: set[str] = set()
        self.extra_files: list[str] = []  # files beside the shards (extractor.json), removed on failure
        self.store: Optional[FeatureStore] = None  # the finished store, once closed

    def add(self, utt_id: str, feats) -> None:
        """Append one utterance ``[T, D]`` (torch or numpy)."""
        arr = feats.detach().cpu().numpy() if hasattr(feats, "detach") else np.asarray(feats)
        if arr.ndim != 2 or arr.shape[1] != self.spec.dim:
            raise FeatureError(f"utterance {utt_id!r}: features must be [T, {self.spec.dim}], got {arr.shape}")
        if utt_id in self._ids:
            raise FeatureError(f"utterance id {utt_id!r} added twice")
        self._ids.add(utt_id)
        self.utterances.append({"id": utt_id, "shard": len(self.shards), "start": self._buf_rows,
                                "length": int(arr.shape[0])})
        self._buf.append(arr.astype(self.dtype, copy=False))
        self._buf_rows += arr.shape[0]
        if self._buf_rows >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        from safetensors.numpy import save_file

        from speechtok.atomic import atomic_path

        if not self._buf:
            return
        data = np.ascontiguousarray(np.concatenate(self._buf, axis=0))
        name = f"shard-{len(self.shards):05d}.safetensors"
        with atomic_path(self.dir / name) as tmp:
            save_file({"feats": data}, str(tmp), metadata={"format": FORMAT})
        self.shards.append({"file": name, "rows": int(data.shape[0])})
        self._buf, self._buf_rows = [], 0

    def close(self) -> "FeatureStore":
        from speechtok.atomic import atomic_write_text

        self._flush()
        index = {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": self.spec.to_dict(),
                 "dim": self.spec.dim, "dtype": str(self.dtype), "num_rows": sum(s["rows"] for s in self.shards),
                 "shards": self.shards, "utterances": self.utterances}
        atomic_write_text(self.dir / INDEX, json.dumps(index) + "\n")
        self.store = FeatureStore(self.dir)
        return self.store

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def discard(self) -> None:
        """Remove what this writer wrote (after a failure: no partial store is left behind)."""
        for s in self.shards:
            (self.dir / s["file"]).unlink(missing_ok=True)
        for extra in self.extra_files:
            (self.dir / extra).unlink(missing_ok=True)
        self.shards, self._buf, self._buf_rows = [], [], 0
        if self._created and self.dir.is_dir() and not any(self.dir.iterdir()):
            self.dir.rmdir()


def _memmap_safetensors(path: Path, rows: int, dim: int, dtype: str, name: str = "feats") -> np.memmap:
    """Memory-map one tensor of a safetensors file (header: u64 size + JSON), checked to be
    ``[rows, dim]`` of ``dtype`` and to lie inside the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header, base = read_safetensors_header(f, size)
        info = header[name]
        start, end = (int(v) for v in info["data_offsets"])
        shape = tuple(int(v) for v in info["shape"])
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise FeatureError(f"{path}: unreadable feature shard ({safe_text(e, 120)})") from e
    if info.get("dtype") != _TAGS[dtype] or shape != (rows, dim):
        raise FeatureError(f"{path}: shard holds {safe_text(info.get('dtype'), 20)} {shape}, the index says "
                           f"{_TAGS[dtype]} ({rows}, {dim})")
    nbytes = rows * dim * np.dtype(dtype).itemsize
    if start < 0 or end - start != nbytes or base + end > size:
        raise FeatureError(f"{path}: shard data offsets {start}..{end} do not fit {nbytes} bytes in a {size}-byte file")
    if nbytes == 0:  # numpy cannot map zero bytes
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)


def _check_index(index: dict, path: Path) -> tuple[FeatureSpec, int, str]:
    """Validate a feature store index (types, ranges, shard names, utterance spans); return
    (spec, dim, dtype). Shard files must be plain names inside the store directory."""
    def f(d, key, kind, what="feature store index", **kw):
        return get_field(d, key, kind, path, FeatureError, what, **kw)

    spec = FeatureSpec.from_dict(f(index, "spec", dict), path)
    dim = f(index, "dim", int, lo=1, hi=MAX_FEATURE_DIM)
    if dim != spec.dim:
        raise FeatureError(f"{path}: 'dim'={dim} differs from the spec's dim {spec.dim}")
    dtype = f(index, "dtype", str)
    if dtype not in _TAGS:
        raise FeatureError(f"{path}: 'dtype' must be float32 or float16, got {safe_text(repr(dtype), 40)}")
    num_rows = f(index, "num_rows", int, lo=0)
    shards = f(index, "shards", list)
    for s in shards:
        name = f(s, "file", str, "shard entry")
        f(s, "rows", int, "shard entry", lo=0)
        if Path(name).name != name or name in ("", ".", "..") or not name.endswith(".safetensors"):
            raise FeatureError(f"{path}: shard file {safe_text(repr(name), 80)} must be a .safetensors file name "
                               "inside the store directory")
    if sum(s["rows"] for s in shards) != num_rows:
        raise FeatureError(f"{path}: 'num_rows'={num_rows} differs from the shards' total rows")
    for u in f(index, "utterances", list):
        f(u, "id", str, "utterance entry")
        sh = f(u, "shard", int, "utterance entry", lo=0, hi=len(shards) - 1)
        start = f(u, "start", int, "utterance entry", lo=0)
        length = f(u, "length", int, "utterance entry", lo=0)
        if start + length > shards[sh]["rows"]:
            raise FeatureError(f"{path}: utterance {safe_text(repr(u['id']), 80)} spans rows {start}..{start + length} "
                               f"past the {shards[sh]['rows']} rows of shard {sh}")
    return spec, dim, dtype


class FeatureStore:
    """Read a feature store directory (see module doc). ``rows_read`` counts rows copied out."""

    def __init__(self, directory: Union[str, Path]):
        self.dir = Path(directory)
        path = self.dir / INDEX
        if not path.is_file():
            raise FeatureError(f"{self.dir}: not a feature store (no {INDEX}; was the writer closed?)")
        index = read_versioned_json(path, FORMAT, FORMAT_VERSION, FeatureError, "feature store index")
        self.index = index
        self.spec, self.dim, self.dtype = _check_index(index, path)
        self.num_rows = int(index["num_rows"])
        self.utterances = index["utterances"]
        self._offsets = np.cumsum([0] + [s["rows"] for s in index["shards"]])
        self._maps: dict[int, np.memmap] = {}
        self.rows_read = 0

    def __len__(self) -> int:
        return len(self.utterances)

    def _shard(self, i: int) -> np.memmap:
        if i not in self._maps:
            sh = self.index["shards"][i]
            self._maps[i] = _memmap_safetensors(self.dir / sh["file"], sh["rows"], self.dim, self.dtype)
        return self._maps[i]

    def utterance(self, i: int) -> np.ndarray:
        """Features ``[T, D]`` (float32) of utterance ``i``."""
        u = self.utterances[i]
        out = np.asarray(self._shard(u["shard"])[u["start"]: u["start"] + u["length"]], dtype=np.float32)
        self.rows_read += out.shape[0]
        return out

    def iter_utterances(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, u in enumerate(self.utterances):
            yield u["id"], self.utterance(i)

    def iter_chunks(self, rows: int = 65536) -> Iterator[np.ndarray]:
        """All rows in order, ``[<=rows, D]`` float32 at a time (bounded memory)."""
        for s in range(len(self.index["shards"])):
            m = self._shard(s)
            for a in range(0, m.shape[0], rows):
                out = np.asarray(m[a: a + rows], dtype=np.float32)
                self.rows_read += out.shape[0]
                yield out

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``min(n, num_rows)`` rows drawn uniformly without replacement, ``[n, D]`` float32.

        Only the drawn rows are read from disk (memory-mapped fancy indexing per shard).
        """
        rng = np.random.default_rng(seed)
        n = min(int(n), self.num_rows)
        idx = np.sort(rng.choice(self.num_rows, size=n, replace=False)) if n < self.num_rows \
            else np.arange(self.num_rows)
        out = np.empty((n, self.dim), dtype=np.float32)
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1
        pos = 0
        for s in np.unique(shard_of):
            local = idx[shard_of == s] - self._offsets[s]
            out[pos: pos + len(local)] = self._shard(int(s))[local]
            pos += len(local)
        self.rows_read += n
        return out


def open_store(directory: Union[str, Path], expect: Optional[FeatureSpec] = None) -> FeatureStore:
    store = FeatureStore(directory)
    if expect is not None:
        expect.check_compatible(store.spec, what=f"feature store {directory}")
    return store
