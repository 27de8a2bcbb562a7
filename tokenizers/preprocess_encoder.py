"""Encoding side of `speechtok.preprocess`: load items (background threads), batch by length,
encode, commit one shard (`ShardEncoder`, shared by the local and the Ray engine)."""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from .audio import resample
from .inputs import AudioItem
from .shards import EncodedItem, write_shard

if TYPE_CHECKING:
    from .preprocessing import PreprocessConfig

log = logging.getLogger("speechtok.preprocessing")


def _tokenizer_meta(tok: Any, num_codebooks) -> dict:
    """What the job records about the tokenizer (rates, codebooks kept)."""
    sizes = list(tok.codebook_sizes)[: num_codebooks or len(tok.codebook_sizes)]
    return {"sample_rate": int(tok.sample_rate), "frame_rate": float(tok.frame_rate), "codebook_sizes": sizes,
            "n_semantic": min(int(getattr(tok, "n_semantic", 0)), len(sizes)),
            "channels": int(getattr(tok, "channels", 1))}


def load_item_audio(item: AudioItem, sample_rate: int, mono: bool = True):
    """Audio of one item as float32 ``[C, S]`` at ``sample_rate`` (raises naming the file)."""
    from .audio import AudioError, load_audio

    if item.start <= 0 and item.end is None:
        wav, sr = load_audio(item.path, sample_rate=None, mono=mono)
        return resample(wav, sr, sample_rate)
    import soundfile as sf
    import torch

    try:
        info = sf.info(item.path)
        a = int(round(item.start * info.samplerate))
        b = info.frames if item.end is None else min(info.frames, int(round(item.end * info.samplerate)))
        data, sr = sf.read(item.path, start=a, stop=b, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(item.path, f"unreadable segment [{item.start}, {item.end}] s ({e})") from e
    wav = torch.from_numpy(data.T.copy())
    if wav.shape[1] == 0:
        raise AudioError(item.path, f"empty segment [{item.start}, {item.end}] s")
    if not torch.isfinite(wav).all():
        raise AudioError(item.path, f"NaN/inf samples in segment [{item.start}, {item.end}] s")
    if mono:
        wav = wav.mean(0, keepdim=True)
    return resample(wav, sr, sample_rate)


class LongFile:
    """What `ShardEncoder.load` returns for a whole-file item too long to load: the codec streams it
    from disk at encode time."""

    def __init__(self, path: str):
        self.path = path


class ShardEncoder:
    """Encodes the items of one shard with a tokenizer and commits the shard (used by every engine)."""

    def __init__(self, tokenizer: Any, output: Path, config: "PreprocessConfig"):
        self.tok = tokenizer
        self.output = Path(output)
        self.config = config
        self.mono = int(getattr(tokenizer, "channels", 1)) == 1
        meta = _tokenizer_meta(tokenizer, config.num_codebooks)
        self.codebook_sizes = meta["codebook_sizes"]

    def load(self, item: AudioItem):
        if hasattr(self.tok, "encode_file") and item.start <= 0 and item.end is None:
            from .audio import audio_info

            frames, rate, _ = audio_info(item.path)
            if frames / rate > self.config.long_file_seconds:
                return LongFile(item.path)
        return load_item_audio(item, int(self.tok.sample_rate), self.mono)

    def _encode_long(self, item: AudioItem, long: LongFile) -> EncodedItem:
        c = self.tok.encode_file(long.path, num_codebooks=self.config.num_codebooks)
        return EncodedItem(meta=item.to_json(), codes=c.codes[0].cpu(), audio_length=int(c.audio_lengths[0]),
                           durations=None)

    def _batches(self, loaded: list[tuple[AudioItem, Any]]) -> Iterator[list[tuple[AudioItem, Any]]]:
        max_samples = self.config.batch_seconds * self.tok.sample_rate
        batch: list = []
        longest = 0
        for it, wav in sorted(loaded, key=lambda x: x[1].shape[-1]):
            n = wav.shape[-1]
            if batch and (len(batch) >= self.config.max_batch_size or (len(batch) + 1) * max(longest, n) > max_samples):
                yield batch
                batch, longest = [], 0
            batch.append((it, wav))
            longest = max(longest, n)
        if batch:
            yield batch

    def _encode_batch(self, batch: list[tuple[AudioItem, Any]]) -> list[EncodedItem]:
        import torch

        C = max(w.shape[0] for _, w in batch)
        S = max(w.shape[-1] for _, w in batch)
        wav = torch.zeros(len(batch), C, S)
        for b, (_, w) in enumerate(batch):
            wav[b, :, : w.shape[-1]] = w
        lengths = torch.tensor([w.shape[-1] for _, w in batch], dtype=torch.long)
        codes = self.tok.encode(wav, sample_rate=int(self.tok.sample_rate), lengths=lengths,
                                num_codebooks=self.config.num_codebooks)
        out = []
        for (it, w), c in zip(batch, codes.unbatch()):
            alen = int(c.audio_lengths[0]) if c.audio_lengths is not None else int(w.shape[-1])
            out.append(EncodedItem(meta=it.to_json(), codes=c.codes[0].cpu(), audio_length=alen,
                                   durations=None if c.durations is None else c.durations[0].cpu()))
        return out

    def encode_loaded(self, number: int, loaded: Sequence[tuple[AudioItem, Any]]) -> dict:
        """Encode ``(item, wav [C, S] or exception)`` pairs of shard ``number`` and commit it."""
        errors = [{"id": it.id, "path": it.path, "error": f"{type(w).__name__}: {w}"}
                  for it, w in loaded if isinstance(w, BaseException)]
        good = [(it, w) for it, w in loaded if not isinstance(w, (BaseException, LongFile))]
        results: dict[str, EncodedItem] = {}
        for it, w in loaded:
            if isinstance(w, LongFile):
                try:
                    results[it.id] = self._encode_long(it, w)
                except Exception as e:
                    log.warning("encode failed for %s: %s", it.path, e)
                    errors.append({"id": it.id, "path": it.path, "error": f"{type(e).__name__}: {e}"})
        for batch in self._batches(good):
            try:
                for r in self._encode_batch(batch):
                    results[r.meta["id"]] = r
            except Exception:
                for pair in batch:  # isolate the failing item(s)
                    try:
                        results[pair[0].id] = self._encode_batch([pair])[0]
                    except Exception as e:
                        log.warning("encode failed for %s: %s", pair[0].path, e)
                        errors.append({"id": pair[0].id, "path": pair[0].path, "error": f"{type(e).__name__}: {e}"})
        order = {it.id: i for i, (it, _) in enumerate(loaded)}  # plan order, independent of batching
        items = [results[i] for i in order if i in results]
        errors.sort(key=lambda e: order[e["id"]])
        return write_shard(self.output, number, items, errors, self.tok.model_id, self.codebook_sizes)

    def encode_shard(self, number: int, items: Sequence[AudioItem]) -> dict:
        """Load (in threads) and encode one shard; returns its index."""
        with ThreadPoolExecutor(max(1, self.config.num_workers)) as pool:
            futs = [pool.submit(self.load, it) for it in items]
            loaded = [(it, _result(f)) for it, f in zip(items, futs)]
        return self.encode_loaded(number, loaded)


def _result(fut: Future) -> Any:
    try:
        return fut.result()
    except Exception as e:  # an unreadable file becomes an error record
        return e


def _prefetch(pairs: Iterable[tuple[int, AudioItem]], load, pool: ThreadPoolExecutor,
              ahead: int) -> Iterator[tuple[int, AudioItem, Any]]:
    """Load audio in background threads, at most ``ahead`` items in flight; keeps order."""
    q: deque = deque()
    for n, it in pairs:
        q.append((n, it, pool.submit(load, it)))
        if len(q) > ahead:
            n0, it0, f0 = q.popleft()
            yield n0, it0, _result(f0)
    while q:
        n0, it0, f0 = q.popleft()
        yield n0, it0, _result(f0)


