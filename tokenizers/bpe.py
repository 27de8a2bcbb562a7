"""BPE over discrete speech tokens (units or codec codes) with Hugging Face ``tokenizers``.

Each code becomes ONE Unicode character: code ``c`` of codebook ``k`` is symbol
``offset_k + c`` (``offset_k`` = sum of the earlier codebook sizes), drawn from CJK Unified
Ideographs (U+4E00..U+9FFF) then CJK Extension B (U+20000..): code points with no decomposition,
so no Unicode normalization can change them. The tokenizer has no normalizer, no pre-tokenizer
(one utterance = one word, no separators) and the full symbol alphabet as its initial alphabet,
so every code sequence encodes and decodes exactly.

``K > 1`` codebooks are interleaved frame-major (``c[0,t], c[1,t], ..., c[K-1,t], c[0,t+1]``;
codec-bpe's layout): the BPE `Codes` then live on a grid of ``K * frame_rate`` code slots.
Durations of the BPE tokens count grid frames (summing input ``durations`` when the input was
deduped), so time stays exact. `UnitBPE.decode` gives back the input codes; where the input had
``durations`` (deduped units) the sequence of units comes back exactly but the split of a
merged token's duration among its units does not (keep `dedup`'s output for that).

Saved as a directory: ``tokenizer.json`` (the HF tokenizer) + ``bpe.json`` (metadata, versioned).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from .codes import Codes, CodesError
from .formats import read_versioned_json

FORMAT = "speechtok.unit_bpe"
FORMAT_VERSION = 1
_BLOCKS = ((0x4E00, 0xA000), (0x20000, 0x2A6E0))
MAX_SYMBOLS = sum(b - a for a, b in _BLOCKS)


def symbol(i: int) -> str:
    """The character for symbol index ``i`` (0 <= i < MAX_SYMBOLS)."""
    for a, b in _BLOCKS:
        if i < b - a:
            return chr(a + i)
        i -= b - a
    raise CodesError(f"symbol index out of range (max {MAX_SYMBOLS})")


def symbol_index(ch: str) -> int:
    o, base = ord(ch), 0
    for a, b in _BLOCKS:
        if a <= o < b:
            return base + o - a
        base += b - a
    raise CodesError(f"character U+{o:04X} is not a unit symbol")


_FIRST = _BLOCKS[0][1] - _BLOCKS[0][0]


def _encode_symbols(idx: torch.Tensor) -> str:
    """Symbol indices ``[N]`` -> their characters, vectorized."""
    cps = torch.where(idx < _FIRST, idx + _BLOCKS[0][0], idx - _FIRST + _BLOCKS[1][0])
    return "".join(map(chr, cps.tolist()))


def _decode_symbols(s: str) -> torch.Tensor:
    """Characters -> symbol indices ``[N]`` (raises on a non-symbol character)."""
    cps = torch.tensor(list(map(ord, s)), dtype=torch.long)
    in0 = (cps >= _BLOCKS[0][0]) & (cps < _BLOCKS[0][1])
    in1 = (cps >= _BLOCKS[1][0]) & (cps < _BLOCKS[1][1])
    if not bool((in0 | in1).all()):
        bad = int(cps[~(in0 | in1)][0])
        raise CodesError(f"character U+{bad:04X} is not a unit symbol")
    return torch.where(in0, cps - _BLOCKS[0][0], cps - _BLOCKS[1][0] + _FIRST)


def _hf():
    try:
        import tokenizers as hf
    except ImportError as e:  # pragma: no cover
        raise ImportError("UnitBPE needs Hugging Face `tokenizers` (pip install tokenizers)") from e
    return hf


def check_bpe(tok, meta: dict, path, error: type[Exception]) -> None:
    """Raise ``error`` naming ``path`` unless ``meta`` (and the HF tokenizer ``tok``) are a sane unit
    BPE: typed, bounded values, before any table is built from them."""
    from .formats import MAX_CODEBOOK_SIZE, MAX_CODEBOOKS, MAX_SAMPLE_RATE, get_field

    def f(key, kind, **kw):
        return get_field(meta, key, kind, path, error, "unit BPE metadata", **kw)

    sizes = f("codebook_sizes", list)
    if not 1 <= len(sizes) <= MAX_CODEBOOKS or not all(type(v) is int and 1 <= v <= MAX_CODEBOOK_SIZE for v in sizes):
        raise error(f"{path}: unit BPE 'codebook_sizes' must be 1-{MAX_CODEBOOKS} ints in [1, {MAX_CODEBOOK_SIZE}]")
    f("base_model_id", str)
    f("frame_rate", float, lo=1e-3, hi=MAX_SAMPLE_RATE)
    f("sample_rate", int, lo=1, hi=MAX_SAMPLE_RATE)
    f("n_semantic", int, lo=0, hi=len(sizes), default=0)
    if not 1 <= tok.get_vocab_size() <= MAX_CODEBOOK_SIZE:
        raise error(f"{path}: BPE vocabulary of {tok.get_vocab_size()} outside [1, {MAX_CODEBOOK_SIZE}]")


class UnitBPE:
    """BPE over `Codes`: ``encode(Codes) -> Codes`` (K=1, durations set) and ``decode`` back."""

    def __init__(self, tokenizer, meta: dict):
        self.tok = tokenizer
        self.meta = meta
        self.codebook_sizes = tuple(int(s) for s in meta["codebook_sizes"])
        self.offsets = [sum(self.codebook_sizes[:k]) for k in range(len(self.codebook_sizes))]
        self.vocab_size = int(tokenizer.get_vocab_size())
        # BPE token id -> number of symbols it spells, and the symbols themselves
        vocab = tokenizer.get_vocab()
        self._spell = [""] * self.vocab_size
        for s, i in vocab.items():
            self._spell[i] = s
        self._nsym = torch.tensor([len(s) for s in self._spell], dtype=torch.long)
        self._char_to_id = {s: i for s, i in vocab.items() if len(s) == 1}
        blob = json.dumps(json.loads(tokenizer.to_str()), sort_keys=True) + json.dumps(meta, sort_keys=True)
        self.hash = hashlib.sha256(blob.encode()).hexdigest()

    @property
    def model_id(self) -> str:
        return f"{self.meta['base_model_id']}+bpe{self.vocab_size}@{self.hash[:12]}"

    # ----------------------------------------------------------------- strings
    def _to_strings(self, codes: Codes) -> list[str]:
        if tuple(codes.codebook_sizes) != self.codebook_sizes:
            raise CodesError(f"BPE trained on codebook sizes {self.codebook_sizes}, got {codes.codebook_sizes}")
        if codes.num_codebooks > 1 and codes.durations is not None:
            raise CodesError("BPE over K>1 codebooks takes frame-level codes (no durations)")
        off = torch.tensor(self.offsets, dtype=torch.long)[:, None]
        out = []
        for b in range(codes.batch_size):
            n = int(codes.lengths[b])
            sym = (codes.codes[b, :, :n].cpu() + off).T.reshape(-1)  # frame-major interleave
            out.append(_encode_symbols(sym))
        return out

    # ----------------------------------------------------------------- API
    @classmethod
    def train(cls, codes: Union[Codes, Iterable[Codes]], vocab_size: int, min_frequency: int = 2,
              max_token_length: Optional[int] = None, show_progress: bool = False) -> "UnitBPE":
        """Learn merges from one or more `Codes` (same model) up to ``vocab_size`` tokens."""
        hf = _hf()
        batches = [codes] if isinstance(codes, Codes) else list(codes)
        if not batches:
            raise CodesError("UnitBPE.train needs at least one Codes batch")
        first = batches[0]
        sizes = tuple(int(s) for s in first.codebook_sizes)
        n_sym = sum(sizes)
        if n_sym > MAX_SYMBOLS:
            raise CodesError(f"{n_sym} symbols exceed the {MAX_SYMBOLS} unit characters available")
        if vocab_size < n_sym:
            raise CodesError(f"vocab_size={vocab_size} is smaller than the {n_sym} base symbols")
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "codebook_sizes": list(sizes),
                "base_model_id": first.model_id, "frame_rate": first.frame_rate,
                "sample_rate": first.sample_rate, "n_semantic": first.n_semantic}
        alphabet = list(_encode_symbols(torch.arange(n_sym)))
        tok = hf.Tokenizer(hf.models.BPE())
        trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                         initial_alphabet=alphabet, limit_alphabet=n_sym,
                                         max_token_length=max_token_length, show_progress=show_progress,
                                         special_tokens=[])
        probe = cls.__new__(cls)
        probe.codebook_sizes = sizes
        probe.offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        for c in batches:
            c.check_model(first.model_id)

        def lines():
            for c in batches:
                yield from (s for s in probe._to_strings(c) if s)

        tok.train_from_iterator(lines(), trainer=trainer)
        return cls(tok, meta)

    def encode(self, codes: Codes) -> Codes:
        """Codes ``[B, K, T]`` -> BPE Codes ``[B, 1, T']`` with ``durations`` in grid frames
        (code slots when K > 1) and ``codebook_sizes=(vocab_size,)``."""
        codes.check_model(self.meta["base_model_id"])
        K = codes.num_codebooks
        strings = self._to_strings(codes)
        encs = self.tok.encode_batch(strings) if strings else []
        ids = [torch.tensor(e.ids, dtype=torch.long) for e in encs]
        T2 = max((len(i) for i in ids), default=0)
        out = torch.full((codes.batch_size, 1, T2), -1, dtype=torch.long)
        dur = torch.zeros((codes.batch_size, T2), dtype=torch.long)
        for b, i in enumerate(ids):
            n = self._nsym[i]
            if int(n.sum()) != len(strings[b]):
                raise CodesError(f"BPE did not cover item {b} exactly ({int(n.sum())} of {len(strings[b])} symbols)")
            if codes.durations is not None:  # sum the unit durations each BPE token covers
                d = codes.durations[b, : int(codes.lengths[b])].cpu()
                ends = torch.cumsum(n, 0)
                cs = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(d, 0)])
                dur[b, : len(i)] = cs[ends] - cs[ends - n]
            else:
                dur[b, : len(i)] = n
            out[b, 0, : len(i)] = i
        lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        dev = codes.codes.device
        return Codes(codes=out.to(dev), lengths=lengths.to(dev), frame_rate=codes.frame_rate * K,
                     codebook_sizes=(self.vocab_size,), sample_rate=codes.sample_rate, model_id=self.model_id,
                     n_semantic=0, durations=dur.to(dev), audio_lengths=codes.audio_lengths)

    def decode(self, codes: Codes) -> Codes:
        """BPE Codes -> the codes they spell ``[B, K, T]`` (``durations=None``; see module doc)."""
        codes.check_model(self.model_id)
        K = len(self.codebook_sizes)
        off = torch.tensor(self.offsets, dtype=torch.long)
        items = []
        for b in range(codes.batch_size):
            n = int(codes.lengths[b])
            s = "".join(self._spell[int(i)] for i in codes.codes[b, 0, :n].cpu())
            sym = _decode_symbols(s)
            if len(sym) % K:
                raise CodesError(f"item {b}: {len(sym)} symbols do not fill whole frames of K={K}")
            fr = sym.reshape(-1, K) - off[None, :]
            items.append(fr.T)
        T2 = max((x.shape[1] for x in items), default=0)
        out = torch.full((codes.batch_size, K, T2), -1, dtype=torch.long)
        for b, x in enumerate(items):
            out[b, :, : x.shape[1]] = x
        lengths = torch.tensor([x.shape[1] for x in items], dtype=torch.long)
        dev = codes.codes.device
        return Codes(codes=out.to(dev), lengths=lengths.to(dev), frame_rate=float(self.meta["frame_rate"]),
                     codebook_sizes=self.codebook_sizes, sample_rate=int(self.meta["sample_rate"]),
                     model_id=self.meta["base_model_id"], n_semantic=int(self.meta.get("n_semantic", 0)),
                     durations=None, audio_lengths=codes.audio_lengths)

    # ----------------------------------------------------------------- I/O
    def save(self, directory: Union[str, Path]) -> Path:
        """Write ``tokenizer.json`` + ``bpe.json`` into ``directory`` (each atomically)."""
        from .atomic import atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "tokenizer.json", self.tok.to_str())
        atomic_write_text(directory / "bpe.json", json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "UnitBPE":
        hf = _hf()
        directory = Path(directory)
        meta_path, tok_path = directory / "bpe.json", directory / "tokenizer.json"
        for p in (meta_path, tok_path):
            if not p.is_file():
                raise CodesError(f"{directory}: not a unit BPE directory (missing {p.name})")
        meta = read_versioned_json(meta_path, FORMAT, FORMAT_VERSION, CodesError, "unit BPE file")
        try:
            tok = hf.Tokenizer.from_file(str(tok_path))
        except Exception as e:
            raise CodesError(f"{tok_path}: unreadable tokenizer ({e})") from e
        check_bpe(tok, meta, meta_path, CodesError)
        return cls(tok, meta)
