"""Teacher features precomputed once over a corpus (as SpeechTokenizer does), read back per crop.

`precompute_features` runs a teacher over every *whole* utterance and stores its features as
float16 safetensors shards keyed by utterance id, plus ``index.json``::

    {"format": "speechtok.teacher_cache", "format_version": 1, "teacher": {...describe()...},
     "dim": 512, "frame_rate": 50.0, "start": 0.0,
     "items": {"<utterance id>": {"shard": "shard-00000.safetensors", "frames": 123}}}

`CachedTeacher` looks up each crop by utterance id and crop offset (`Batch.ids`,
`Batch.offsets`) and returns the frames covering it, so any crop of any length is served from
one pass of the teacher over the corpus (with the whole utterance as context).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from speechtok.formats import read_versioned_json

from ..distill import TeacherFeatures

CACHE_FORMAT = "speechtok.teacher_cache"
CACHE_VERSION = 1
INDEX_FILE = "index.json"


class CacheError(ValueError):
    """A feature cache is missing, malformed or lacks an utterance (names the path and id)."""


def precompute_features(teacher, items: Sequence, out_dir: str, *, shard_items: int = 256,
                        progress: bool = False) -> Path:
    """Run ``teacher`` over whole utterances (`speechtok.codec.train.data.Utterance`) into ``out_dir``.

    Resumable: shards already listed in an existing index are kept; the index is rewritten
    atomically after each shard.
    """
    from safetensors.torch import save_file

    from speechtok.atomic import atomic_path, atomic_write_text

    from ..train.data import load_crop

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = _read_index(out) if (out / INDEX_FILE).is_file() else None
    done: dict = dict(index["items"]) if index else {}
    todo = [u for u in items if u.id not in done]
    sr = int(getattr(teacher, "sample_rate", 16000))
    n_shards = len({v["shard"] for v in done.values()})
    it = range(0, len(todo), shard_items)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="teacher features", unit="shard")
    meta = None
    for s in it:
        tensors = {}
        name = f"shard-{n_shards:05d}.safetensors"
        for u in todo[s: s + shard_items]:
            wav = load_crop(u, 0.0, u.duration + 1.0, sr)
            tf = teacher(wav[None, None], torch.tensor([wav.shape[0]]), sr)
            n = int(tf.lengths[0])
            tensors[u.id] = tf.features[0, :n].to(torch.float16).contiguous()
            done[u.id] = {"shard": name, "frames": n}
            meta = tf
        with atomic_path(out / name) as tmp:
            save_file(tensors, str(tmp))
        n_shards += 1
        atomic_write_text(out / INDEX_FILE, json.dumps(_index(teacher, meta, done, index), indent=1, sort_keys=True))
    if not (out / INDEX_FILE).is_file():
        atomic_write_text(out / INDEX_FILE, json.dumps(_index(teacher, meta, done, index), indent=1, sort_keys=True))
    return out


def _index(teacher, tf: Optional[TeacherFeatures], items: dict, old: Optional[dict]) -> dict:
    if tf is None and old is not None:
        return dict(old, items=items)
    return {"format": CACHE_FORMAT, "format_version": CACHE_VERSION, "teacher": teacher.describe(),
            "dim": int(teacher.dim), "frame_rate": float(teacher.frame_rate),
            "start": float(tf.start[0]) if tf is not None else 0.0, "items": items}


def _read_index(directory: Path) -> dict:
    path = directory / INDEX_FILE
    return read_versioned_json(path, CACHE_FORMAT, CACHE_VERSION, CacheError, "teacher feature index")


class CachedTeacher:
    """Serve precomputed features for crops ``(id, offset, length)``.

    Args:
        directory: the folder written by `precompute_features`.
    """

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.index = _read_index(self.directory)
        self.dim = int(self.index["dim"])
        self.frame_rate = float(self.index["frame_rate"])
        self.start = float(self.index["start"])
        self._shards: dict[str, object] = {}

    def describe(self) -> dict:
        return {"kind": "cached", "path": str(self.directory), "teacher": self.index.get("teacher")}

    def _get(self, uid: str) -> torch.Tensor:
        from safetensors import safe_open

        entry = self.index["items"].get(uid)
        if entry is None:
            raise CacheError(f"{self.directory}: no cached teacher features for utterance {uid!r}; "
                             "rerun precompute_features over the training data")
        name = entry["shard"]
        if name not in self._shards:
            path = self.directory / name
            if not path.is_file():
                raise CacheError(f"{path}: missing feature shard (listed in {INDEX_FILE})")
            self._shards[name] = safe_open(str(path), framework="pt")
        return self._shards[name].get_tensor(uid)

    def __call__(self, audio: torch.Tensor, lengths: torch.Tensor, sample_rate: int,
                 ids: Optional[Sequence[str]] = None, offsets: Optional[torch.Tensor] = None) -> TeacherFeatures:
        """Features covering each crop: ``audio`` ``[B, 1, S]`` only gives crop lengths."""
        if ids is None or offsets is None:
            raise CacheError(f"{self.directory}: a cached teacher needs utterance ids and crop offsets")
        B = len(ids)
        rate = self.frame_rate
        pieces, starts = [], []
        for b in range(B):
            full = self._get(ids[b])
            off = float(offsets[b])
            dur = float(lengths[b]) / sample_rate
            first = max(0, int((off - self.start) * rate) - 1)
            last = min(full.shape[0], int((off + dur - self.start) * rate) + 2)
            pieces.append(full[first:max(first, last)].float())
            starts.append(self.start + first / rate - off)
        T = max(1, max(p.shape[0] for p in pieces))
        feats = torch.zeros(B, T, self.dim)
        for b, p in enumerate(pieces):
            feats[b, : p.shape[0]] = p
        return TeacherFeatures(feats, rate, torch.tensor(starts, dtype=torch.float64),
                               torch.tensor([p.shape[0] for p in pieces], dtype=torch.long))
