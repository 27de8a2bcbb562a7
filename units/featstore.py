"""Sharded feature files on disk: safetensors shards + one JSON index.

Layout of a feature store directory::

    index.json              {"format": "speechtok.featstore", "format_version": 1, "spec": {...},
                             "dim", "dtype", "num_rows", "shards": [{"file", "rows"}],
                             "utterances": [{"id", "shard", "start", "length"}]}
    shard-00000.safetensors one tensor "feats" [rows, D] (utterances concatenated frame-wise)

Shards are written atomically as they fill; the index last, so a half-written store never looks
complete. Reading memory-maps the shards: `FeatureStore.sample` reads only the rows it draws
(``rows_read`` counts them), so k-means can train on stores far larger than RAM.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from speechtok.formats import read_versioned_json

from .features.base import FeatureError, FeatureSpec

FORMAT = "speechtok.featstore"
FORMAT_VERSION = 1
INDEX = "index.json"
_DTYPES = {"F32": np.float32, "F16": np.float16}


class FeatureWriter:
    """Append utterance features ``[T, D]`` and write shards of about ``shard_rows`` rows.

    Use as a context manager; the index is written on successful exit (or by `close`).
    """

    def __init__(self, directory: Union[str, Path], spec: FeatureSpec, shard_rows: int = 262144,
                 dtype: str = "float32"):
        if dtype not in ("float32", "float16"):
            raise FeatureError(f"feature store dtype must be float32 or float16, got {dtype!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / INDEX).exists():
            raise FeatureError(f"{self.dir}: already holds a feature store ({INDEX}); pick a new directory")
        self.spec, self.shard_rows, self.dtype = spec, int(shard_rows), np.dtype(dtype)
        self._buf: list[np.ndarray] = []
        self._buf_rows = 0
        self.shards: list[dict] = []
        self.utterances: list[dict] = []
        self._ids: set[str] = set()

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
        return FeatureStore(self.dir)

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()


def _memmap_safetensors(path: Path, name: str = "feats") -> np.memmap:
    """Memory-map one tensor of a safetensors file (header: u64 size + JSON)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        info = header[name]
        dtype = _DTYPES[info["dtype"]]
        start, _ = info["data_offsets"]
    except (OSError, KeyError, ValueError, struct.error) as e:
        raise FeatureError(f"{path}: unreadable feature shard ({e})") from e
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + n + start, shape=tuple(info["shape"]))


class FeatureStore:
    """Read a feature store directory (see module doc). ``rows_read`` counts rows copied out."""

    def __init__(self, directory: Union[str, Path]):
        self.dir = Path(directory)
        path = self.dir / INDEX
        if not path.is_file():
            raise FeatureError(f"{self.dir}: not a feature store (no {INDEX}; was the writer closed?)")
        index = read_versioned_json(path, FORMAT, FORMAT_VERSION, FeatureError, "feature store index")
        self.index = index
        self.spec = FeatureSpec.from_dict(index["spec"])
        self.dim = int(index["dim"])
        self.num_rows = int(index["num_rows"])
        self.utterances = index["utterances"]
        self._offsets = np.cumsum([0] + [s["rows"] for s in index["shards"]])
        self._maps: dict[int, np.memmap] = {}
        self.rows_read = 0

    def __len__(self) -> int:
        return len(self.utterances)

    def _shard(self, i: int) -> np.memmap:
        if i not in self._maps:
            self._maps[i] = _memmap_safetensors(self.dir / self.index["shards"][i]["file"])
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
