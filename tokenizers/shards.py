"""Code shards: many items' codes in one safetensors file + a JSON index per shard.

Layout of a preprocessing output directory::

    job.json                      # format, version, model id, tokenizer metadata, job config
    plan.jsonl                    # one line per shard: the items it holds (fixed before encoding)
    shards/shard-000000.safetensors
    shards/shard-000000.json      # the shard index; its presence marks the shard done
    index.jsonl                   # all items (id, shard, source, lengths, model id), written at the end
    errors.jsonl                  # items that failed (id, path, error), written at the end
    .speechtok.lock               # flock'ed by the run using the directory (gone when it ends)

A shard's safetensors holds ``codes`` (int16 or int32 ``[K, N]``: every item's ``[K, T_i]``
concatenated along time), ``offsets`` (int64 ``[n + 1]``, item i spans ``offsets[i]:offsets[i+1]``),
``audio_lengths`` (int64 ``[n]``, samples at the model rate) and, for tokenizers with token
durations, ``durations`` (int32 ``[N]``). Both files are written atomically, the safetensors first;
the JSON index records the safetensors' sha256, so a shard is either wholly there or absent.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch

from .atomic import atomic_path, atomic_write_text
from .codes import Codes
from .formats import read_versioned_json, safe_text
from .registry import file_sha256

SHARDS_FORMAT = "speechtok.shards"
SHARDS_FORMAT_VERSION = 1
JOB_FILE = "job.json"
PLAN_FILE = "plan.jsonl"
INDEX_FILE = "index.jsonl"
ERRORS_FILE = "errors.jsonl"
SHARD_DIR = "shards"
LOCK_FILE = ".speechtok.lock"  # held (flock) by the run using the directory; removed when it ends
PathLike = Union[str, os.PathLike]


class ShardError(RuntimeError):
    """A shard directory or file is missing, corrupt or of another format/version (names the file)."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def codes_dtype(codebook_sizes: Sequence[int]) -> torch.dtype:
    """Smallest signed dtype holding every code (int16 up to 32768 entries, else int32)."""
    return torch.int16 if max(codebook_sizes, default=1) <= 2 ** 15 else torch.int32


@dataclass(frozen=True)
class EncodedItem:
    """One item's result, ready for a shard.

    Attributes:
        meta: the item's JSON record (id, path, start, duration, text, speaker).
        codes: int64 ``[K, T]`` valid codes (no padding).
        audio_length: samples of the item's audio at the model rate.
        durations: optional int64 ``[T]`` grid frames per token.
    """

    meta: dict
    codes: torch.Tensor
    audio_length: int
    durations: Optional[torch.Tensor] = None


def write_shard(directory: PathLike, index: int, items: Sequence[EncodedItem], errors: Sequence[dict],
                model_id: str, codebook_sizes: Sequence[int]) -> dict:
    """Write ``shards/shard-XXXXXX.{safetensors,json}`` atomically; returns the index dict.

    Output bytes depend only on the inputs (no timestamps, hosts or engine), so every engine
    writes identical shards.
    """
    from safetensors.torch import save_file

    directory = Path(directory) / SHARD_DIR
    name = shard_name(index)
    dtype = codes_dtype(codebook_sizes)
    K = len(codebook_sizes)
    lengths = [int(it.codes.shape[1]) for it in items]
    offsets = torch.zeros(len(items) + 1, dtype=torch.long)
    if items:
        offsets[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    for it in items:
        if it.codes.dim() != 2 or it.codes.shape[0] != K:
            raise ShardError(f"{name}: item {it.meta.get('id')!r} codes must be [K={K}, T], "
                             f"got {tuple(it.codes.shape)}")
    codes = torch.cat([it.codes.to(dtype) for it in items], dim=1) if items else torch.zeros(K, 0, dtype=dtype)
    tensors = {"codes": codes.contiguous(), "offsets": offsets,
               "audio_lengths": torch.tensor([it.audio_length for it in items], dtype=torch.long)}
    has_durations = bool(items) and items[0].durations is not None
    if has_durations:
        tensors["durations"] = torch.cat([it.durations.to(torch.int32) for it in items]).contiguous()
    st_path = directory / f"{name}.safetensors"
    try:
        with atomic_path(st_path) as tmp:
            # one metadata key: safetensors stores metadata as a hash map, so several keys come out
            # in a per-process order and identical shards would differ in bytes
            save_file(tensors, str(tmp), metadata={"speechtok": json.dumps(
                {"format": SHARDS_FORMAT, "format_version": SHARDS_FORMAT_VERSION, "model_id": model_id},
                sort_keys=True)})
    except Exception as e:  # OSError, or safetensors' own error wrapping one (ENOSPC, EACCES)
        raise ShardError(f"{st_path}: cannot write shard ({_os_cause(e)})") from e
    index_rec = {
        "format": SHARDS_FORMAT, "format_version": SHARDS_FORMAT_VERSION, "shard": index,
        "file": st_path.name, "sha256": file_sha256(st_path), "model_id": model_id,
        "num_items": len(items), "num_frames": int(offsets[-1]),
        "items": [dict(it.meta, num_frames=n, audio_samples=int(it.audio_length), offset=int(o))
                  for it, n, o in zip(items, lengths, offsets.tolist())],
        "errors": list(errors),
    }
    write_text(directory / f"{name}.json", json.dumps(index_rec, sort_keys=True) + "\n", "shard index")
    return index_rec


def _os_cause(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"


def write_text(path: Path, text: str, what: str) -> None:
    """`atomic_write_text`, raising `ShardError` naming ``path`` and the cause (full disk, no permission)."""
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise ShardError(f"{path}: cannot write {what} ({_os_cause(e)})") from e


def read_shard_index(path: PathLike) -> dict:
    return read_versioned_json(path, SHARDS_FORMAT, SHARDS_FORMAT_VERSION, ShardError, "shard index")


def done_shards(directory: PathLike) -> dict[int, Path]:
    """Shard number -> path of its JSON index, for every committed shard.

    Cheap (a directory listing, nothing parsed): the index is written atomically after its
    safetensors, so its presence marks the shard complete.
    """
    out = {}
    d = Path(directory) / SHARD_DIR
    if d.is_dir():
        for p in d.glob("shard-*.json"):
            try:
                n = int(p.stem.split("-", 1)[1])
            except ValueError:
                continue
            if (d / f"{p.stem}.safetensors").is_file():
                out[n] = p
    return dict(sorted(out.items()))


def verify_shard(directory: PathLike, number: int, expected: Sequence[tuple[str, str]], model_id: str,
                 num_codebooks: int) -> Optional[str]:
    """Why committed shard ``number`` cannot be kept on resume, or None when it is complete and intact
    (index readable, sha256 matching, ``[K, N]`` codes with K = ``num_codebooks``) and holds exactly
    the plan's items ``expected`` (``(id, path)`` pairs, encoded or failed), made by ``model_id``."""
    d = Path(directory) / SHARD_DIR
    index_path, st_path = d / f"{shard_name(number)}.json", d / f"{shard_name(number)}.safetensors"
    try:
        rec = read_shard_index(index_path)
        if rec.get("shard") != number or rec.get("file") != st_path.name:
            return f"{index_path}: index is of shard {rec.get('shard')!r} ({rec.get('file')!r})"
        if rec.get("model_id") != model_id:
            return f"{index_path}: made by model {rec.get('model_id')!r}, the job's model is {model_id!r}"
        items, errors = rec["items"], rec["errors"]
        if sorted((str(it["id"]), str(it["path"])) for it in items + errors) != sorted(expected):
            return f"{index_path}: its items are not the plan's items of shard {number}"
        if rec["num_items"] != len(items) or file_sha256(st_path) != rec["sha256"]:
            return f"{st_path}: empty, truncated or replaced (sha256 does not match its index)"
        from safetensors import safe_open

        with safe_open(str(st_path), "pt") as f:
            shape, n_off = f.get_slice("codes").get_shape(), f.get_slice("offsets").get_shape()
        if shape != [num_codebooks, rec["num_frames"]] or n_off != [len(items) + 1]:
            return f"{st_path}: codes {shape} do not match the job ({num_codebooks} codebooks)"
    except Exception as e:  # noqa: BLE001 - any unreadable part means: redo the shard
        return f"{index_path}: unreadable shard ({type(e).__name__}: {e})"
    return None


@contextlib.contextmanager
def lock_output(directory: PathLike) -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``flock`` on ``directory/.speechtok.lock`` while the block runs.

    A second run on the same directory (any process on this machine, or on a filesystem with
    working ``flock`` such as NFSv4) gets a `ShardError` at once. The lock dies with its process
    (``kill -9`` included); the file is removed when the block ends.
    """
    import fcntl

    path = Path(directory) / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ShardError(f"{path}: cannot create the lock file ({_os_cause(e)})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            if isinstance(e, BlockingIOError):
                raise ShardError(f"{directory}: another preprocess run is using this output directory "
                                 f"({safe_text(holder or 'pid unknown')}); wait for it or use another "
                                 "directory") from None
            raise ShardError(f"{path}: cannot lock ({_os_cause(e)})") from e
        try:
            st, cur = os.fstat(fd), os.stat(path)
            same = (st.st_ino, st.st_dev) == (cur.st_ino, cur.st_dev)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file while we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked, so no other run can hold a lock on this inode
        os.close(fd)


def read_job(directory: PathLike) -> dict:
    path = Path(directory) / JOB_FILE
    if not path.is_file():
        raise ShardError(f"{directory}: not a speechtok shard directory (no {JOB_FILE})")
    return read_versioned_json(path, SHARDS_FORMAT, SHARDS_FORMAT_VERSION, ShardError, "shards job")


@dataclass(frozen=True)
class ShardItem:
    """One item read back from shards.

    Attributes:
        id: the item id.
        codes: int64 ``[K, T]``.
        audio_length: samples at ``sample_rate`` of the model.
        durations: optional int64 ``[T]``.
        meta: the index record (path, text, speaker, shard, ...).
    """

    id: str
    codes: torch.Tensor
    audio_length: int
    durations: Optional[torch.Tensor]
    meta: dict


class ShardSet:
    """Read access to a preprocessing output directory (complete shards only).

    ``ShardSet(dir).items()`` iterates every item in shard order; ``to_codes(item)`` wraps one as
    `Codes` (``B=1``) with the job's model metadata, ready for ``tokenizer.decode``.
    """

    def __init__(self, directory: PathLike, verify: bool = False):
        self.directory = Path(directory)
        self.job = read_job(self.directory)
        self.shards = done_shards(self.directory)  # number -> index path, parsed on demand
        self.verify = verify
        self._indices: dict[int, dict] = {}
        tok = self.job["tokenizer"]
        self.model_id: str = self.job["model_id"]
        self.codebook_sizes: tuple[int, ...] = tuple(tok["codebook_sizes"])
        self.frame_rate: float = float(tok["frame_rate"])
        self.sample_rate: int = int(tok["sample_rate"])
        self.n_semantic: int = int(tok.get("n_semantic", 0))

    def index(self, number: int) -> dict:
        """The JSON index of shard ``number`` (items with id, path, text, num_frames, ...; errors)."""
        if number not in self._indices:
            if number not in self.shards:
                raise ShardError(f"{self.directory}: shard {number} is not complete")
            self._indices[number] = read_shard_index(self.shards[number])
        return self._indices[number]

    def __len__(self) -> int:
        return sum(self.index(n)["num_items"] for n in self.shards)

    @property
    def complete(self) -> bool:
        return len(self.shards) == int(self.job["num_shards"])

    def load_shard(self, number: int) -> list[ShardItem]:
        from safetensors.torch import load_file

        if number not in self.shards:
            raise ShardError(f"{self.directory}: shard {number} is not complete")
        # not cached: iterating a large corpus must not accumulate every shard's index
        rec = self._indices.get(number) or read_shard_index(self.shards[number])
        path = self.directory / SHARD_DIR / rec["file"]
        if self.verify and file_sha256(path) != rec["sha256"]:
            raise ShardError(f"{path}: sha256 does not match its index (corrupt or replaced shard)")
        try:
            t = load_file(str(path))
        except Exception as e:
            raise ShardError(f"{path}: unreadable shard ({e})") from e
        codes, offsets, alens = t["codes"], t["offsets"], t["audio_lengths"]
        durs = t.get("durations")
        if offsets.numel() != rec["num_items"] + 1 or int(offsets[-1]) != codes.shape[1]:
            raise ShardError(f"{path}: offsets do not match its index ({rec['num_items']} items)")
        out = []
        for i, meta in enumerate(rec["items"]):
            a, b = int(offsets[i]), int(offsets[i + 1])
            out.append(ShardItem(id=meta["id"], codes=codes[:, a:b].long(), audio_length=int(alens[i]),
                                 durations=None if durs is None else durs[a:b].long(),
                                 meta=dict(meta, shard=number)))
        return out

    def items(self, shards: Optional[Sequence[int]] = None) -> Iterator[ShardItem]:
        for number in (sorted(self.shards) if shards is None else shards):
            yield from self.load_shard(number)

    def to_codes(self, item: ShardItem) -> Codes:
        T = item.codes.shape[1]
        return Codes(codes=item.codes[None], lengths=torch.tensor([T]), frame_rate=self.frame_rate,
                     codebook_sizes=self.codebook_sizes, sample_rate=self.sample_rate, model_id=self.model_id,
                     n_semantic=self.n_semantic,
                     durations=None if item.durations is None else item.durations[None],
                     audio_lengths=torch.tensor([item.audio_length]))

    def errors(self) -> list[dict]:
        return [e for n in self.shards for e in self.index(n)["errors"]]

    def layout(self, **options):
        """The `speechtok.lm.TokenLayout` for these shards' codes (their model and codebooks), with
        ``options`` (pattern, flat, offset, add_bos, add_eos, codebooks) as in `TokenLayout.for_codes`."""
        from .lm import TokenLayout

        k = options.pop("codebooks", None)
        sizes = self.codebook_sizes if k is None else self.codebook_sizes[:int(k)]
        if k is not None and not 1 <= int(k) <= len(self.codebook_sizes):
            raise ShardError(f"{self.directory}: codebooks={k}: the shards have {len(self.codebook_sizes)}")
        return TokenLayout(codebook_sizes=sizes, model_id=self.model_id, frame_rate=self.frame_rate,
                           sample_rate=self.sample_rate, n_semantic=min(self.n_semantic, len(sizes)), **options)


class ShardDataset(torch.utils.data.IterableDataset):
    """Iterable over shard items for LM training; splits shards over DataLoader workers and ranks.

    Args:
        directory: a preprocessing output directory.
        shuffle: shuffle shard order and items (within a buffer of ``shuffle_buffer`` items).
        seed: base seed; call `set_epoch` between epochs for a new order.
        rank, world_size: distributed split (each rank reads every ``world_size``-th shard).
        num_codebooks: keep the first k codebooks of each item.

    Yields `ShardItem` (codes int64 ``[K, T]``).
    """

    def __init__(self, directory: PathLike, shuffle: bool = False, seed: int = 0, shuffle_buffer: int = 1000,
                 rank: int = 0, world_size: int = 1, num_codebooks: Optional[int] = None):
        super().__init__()
        self.shardset = ShardSet(directory)
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.num_codebooks = num_codebooks
        self.epoch = 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[int]:
        shards = sorted(self.shardset.shards)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(shards)
        shards = shards[self.rank::self.world_size]
        info = torch.utils.data.get_worker_info()
        if info is not None:
            shards = shards[info.id::info.num_workers]
        return shards

    def __iter__(self) -> Iterator[ShardItem]:
        rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}")
        buf: list[ShardItem] = []
        for item in self.shardset.items(self._my_shards()):
            if self.num_codebooks is not None:
                item = ShardItem(item.id, item.codes[: self.num_codebooks], item.audio_length, item.durations,
                                 item.meta)
            if not self.shuffle:
                yield item
                continue
            buf.append(item)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def __len__(self) -> int:  # items over all ranks and workers
        return len(self.shardset)

    def collate(self, items: Sequence[ShardItem]) -> Codes:
        """A DataLoader ``collate_fn``: items -> one padded `Codes` batch ``[B, K, T]`` (-1 padding)."""
        sizes = self.shardset.codebook_sizes[: self.num_codebooks or len(self.shardset.codebook_sizes)]
        return Codes.batch([self.shardset.to_codes(it).with_(codebook_sizes=sizes) for it in items])


def write_json_lines(path: PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write JSONL atomically (records may be a generator); returns the number of lines.

    Raises `ShardError` naming ``path`` and the cause when it cannot be written."""
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                n = 0
                for r in records:
                    f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
                    n += 1
    except OSError as e:
        raise ShardError(f"{path}: cannot write ({_os_cause(e)})") from e
    return n


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.3f} h" if math.isfinite(seconds) else "? h"
