"""Training data: utterance lists from manifests or folders, seeded random crops, exact resume.

Every crop is a pure function of ``(seed, epoch, position in epoch)``: the data order of epoch
``e`` is a permutation drawn from ``seed + e`` and the crop offset of item ``i`` from
``(seed, e, i)``. Resuming at batch ``n`` therefore reproduces the very same batches whatever the
number of DataLoader workers; the trainer only stores ``n`` (`BatchSampler.start`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from speechtok.formats import MAX_SAMPLE_RATE, get_field, safe_text

MAX_SECONDS = 3600.0 * 24 * 7  # one manifest item: at most a week of audio
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


class DataError(ValueError):
    """A manifest, folder or audio file cannot be used for training (names it)."""


@dataclass(frozen=True)
class Utterance:
    """One audio file. ``duration`` in seconds, ``sample_rate`` of the file (Hz)."""

    id: str
    path: str
    duration: float
    sample_rate: int
    speaker: Optional[str] = None
    source: Optional[str] = None


@dataclass(frozen=True)
class Batch:
    """A training batch.

    Attributes:
        audio: float32 ``[B, 1, S]`` at the model rate, zero past ``lengths``.
        lengths: int64 ``[B]`` valid samples.
        ids: utterance ids (cached teacher features are keyed by them).
        offsets: float64 ``[B]``: where each crop starts in its utterance (seconds).
        sample_rate: Hz.
    """

    audio: torch.Tensor
    lengths: torch.Tensor
    ids: tuple[str, ...]
    offsets: torch.Tensor
    sample_rate: int

    def to(self, device) -> "Batch":
        return Batch(self.audio.to(device, non_blocking=True), self.lengths.to(device), self.ids,
                     self.offsets, self.sample_rate)


def _read_manifest(path: Path) -> list[Utterance]:
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: bad manifest line ({e.msg})") from e
            audio = get_field(row, "audio", str, where, DataError, "manifest line")
            apath = audio if os.path.isabs(audio) else str(path.parent / audio)
            uid = str(row.get("id") or Path(audio).stem)
            dur = get_field(row, "duration", float, where, DataError, "manifest line", lo=0.0, hi=MAX_SECONDS,
                            default=None, allow_none=True)
            sr = get_field(row, "sample_rate", int, where, DataError, "manifest line", lo=1, hi=MAX_SAMPLE_RATE,
                           default=None, allow_none=True)
            if dur is None or sr is None:
                dur, sr = _probe(apath)
            out.append(Utterance(uid, apath, float(dur), int(sr), _opt_str(row, "speaker", where),
                                 _opt_str(row, "source", where)))
    return out


def _opt_str(row: dict, key: str, where: str) -> Optional[str]:
    """An optional text field of a manifest line (``speaker``/``source``); numbers are kept as text."""
    value = row.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: manifest line {key!r} must be a string, got {safe_text(repr(value), 60)}")


def _probe(path: str) -> tuple[float, int]:
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - soundfile raises several types
        raise DataError(f"{path}: unreadable audio ({e})") from e
    return info.frames / info.samplerate, int(info.samplerate)


def list_utterances(sources: Sequence[str], min_seconds: float = 0.0,
                    exclude_speakers: Sequence[str] = (), exclude_sources: Sequence[str] = ()) -> list[Utterance]:
    """Utterances from manifests (``*.jsonl``) and folders (searched recursively).

    Folder items get their path relative to the folder (without extension) as id.
    """
    items: list[Utterance] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file():
                    dur, sr = _probe(str(f))
                    items.append(Utterance(str(f.relative_to(p).with_suffix("")), str(f), dur, sr))
        elif p.is_file():
            items.extend(_read_manifest(p))
        else:
            raise DataError(f"{src}: no such manifest or folder")
    excl, excl_src = set(exclude_speakers), set(exclude_sources)
    items = [u for u in items if u.duration >= min_seconds and (u.speaker is None or u.speaker not in excl)
             and (u.source is None or u.source not in excl_src)]
    ids = [u.id for u in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(f"duplicate utterance ids across {list(sources)} (e.g. {dup}); ids key cached features")
    return items


def load_crop(utt: Utterance, start: float, seconds: float, sample_rate: int) -> torch.Tensor:
    """Mono float32 ``[S]`` audio of ``utt`` from ``start`` (s) for at most ``seconds``, at ``sample_rate``."""
    import soundfile as sf

    try:
        with sf.SoundFile(utt.path) as f:
            sr = f.samplerate
            first = int(round(start * sr))
            f.seek(min(first, f.frames))
            x = f.read(int(math.ceil(seconds * sr)), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{utt.path}: unreadable audio ({e})") from e
    wav = torch.from_numpy(x.mean(axis=1) if x.shape[1] > 1 else x[:, 0])
    if not torch.isfinite(wav).all():
        raise DataError(f"{utt.path}: audio holds NaN/inf")
    if sr != sample_rate:
        import torchaudio.functional as AF

        wav = AF.resample(wav, sr, sample_rate)
    return wav[: int(round(seconds * sample_rate))]


class CropDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(epoch, position, item)``; returns one random crop."""

    def __init__(self, items: Sequence[Utterance], sample_rate: int, crop_seconds: float, seed: int):
        if not items:
            raise DataError("no training utterances (empty manifest/folder or all filtered out)")
        self.items = list(items)
        self.sample_rate = int(sample_rate)
        self.crop_seconds = float(crop_seconds)
        self.crop_samples = int(round(crop_seconds * sample_rate))
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int, str, float]:
        epoch, pos, idx = key
        utt = self.items[idx]
        slack = max(0.0, utt.duration - self.crop_seconds)
        rng = np.random.default_rng([self.seed, epoch, pos])
        start = float(rng.uniform(0.0, slack)) if slack > 0 else 0.0
        wav = load_crop(utt, start, self.crop_seconds, self.sample_rate)
        n = int(wav.shape[0])
        out = torch.zeros(self.crop_samples)
        out[:n] = wav
        return out, n, utt.id, start


def collate(samples, sample_rate: int) -> Batch:
    wavs, lens, ids, starts = zip(*samples)
    return Batch(torch.stack(wavs)[:, None, :], torch.tensor(lens, dtype=torch.long), tuple(ids),
                 torch.tensor(starts, dtype=torch.float64), sample_rate)


class BatchSampler:
    """Endless batches of ``(epoch, position, item)`` keys, starting at batch ``start``.

    Each epoch is a seeded permutation; under DDP rank ``r`` of ``w`` takes positions
    ``r, r + w, ...`` so ranks see disjoint items. The last incomplete batch of an epoch is dropped.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.n, self.bs, self.seed, self.start = num_items, batch_size, seed, start
        self.rank, self.world = rank, world_size
        self.per_epoch = (num_items // world_size) // batch_size
        if self.per_epoch < 1:
            raise DataError(f"{num_items} utterances are fewer than batch_size={batch_size} x "
                            f"world_size={world_size}: lower the batch size or add data")

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        b = self.start
        while True:
            epoch, j = divmod(b, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            mine = perm[self.rank::self.world]
            for jj in range(j, self.per_epoch):
                pos = [jj * self.bs + i for i in range(self.bs)]
                yield [(epoch, p * self.world + self.rank, mine[p]) for p in pos]
                b += 1
            # next epoch starts from its first batch
            b = (epoch + 1) * self.per_epoch


class _Collate:
    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate

    def __call__(self, samples) -> Batch:
        return collate(samples, self.sample_rate)


def make_loader(dataset: CropDataset, batch_size: int, seed: int, start: int = 0, num_workers: int = 0,
                rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    """An endless DataLoader of `Batch` starting at batch ``start`` (for exact resume)."""
    sampler = BatchSampler(len(dataset), batch_size, seed, start, rank, world_size)
    # a private generator: creating the iterator must not draw from the global RNG (exact resume)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       generator=torch.Generator().manual_seed(seed),
                                       collate_fn=_Collate(dataset.sample_rate),
                                       persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())


def fixed_batch(items: Sequence[Utterance], sample_rate: int, crop_seconds: float, count: int) -> Batch:
    """The first ``count`` items, cropped from their start: a fixed validation/sample batch."""
    ds = CropDataset(items[:count], sample_rate, crop_seconds, seed=0)
    samples = []
    for i in range(len(ds)):
        utt = ds.items[i]
        wav = load_crop(utt, 0.0, crop_seconds, sample_rate)
        out = torch.zeros(ds.crop_samples)
        out[: wav.shape[0]] = wav
        samples.append((out, int(wav.shape[0]), utt.id, 0.0))
    return collate(samples, sample_rate)
