"""Flat token stream for nanoGPT-style and Megatron-style trainers, and its reader `TokenStream`.

Files of a ``tokens`` export:

    tokens.bin       every utterance's LM ids (flat layouts only, bos/eos included: they separate the
                     documents) concatenated, raw little-endian ``uint16`` when ``vocab_size <= 65536``,
                     else ``int32``. ``numpy.memmap("tokens.bin", dtype, mode="r")`` is nanoGPT's ``train.bin``.
    tokens.idx       Megatron-LM's ``MMapIndexedDataset`` index of it (``--data-path <dir>/tokens``):
                     magic ``MMIDIDX\\x00\\x00``, u64 version 1, u8 dtype code (8 uint16, 4 int32), u64
                     sequence count N, u64 document count N+1, int32 ``[N]`` sequence lengths, int64
                     ``[N]`` byte pointers, int64 ``[N+1]`` document indices ``0..N`` (one sequence per
                     utterance, one document per sequence). Megatron has no uint32 code, hence int32.
    meta.json        format ``speechtok.tokens`` v1: layout, model id, dtype, vocab_size, counts.
    documents.jsonl  one line per utterance in stream order: id, text, speaker, seconds, num_frames,
                     num_tokens.

Memory stays flat: ids are appended to ``tokens.bin`` as they come, the lengths to a side file,
and the index is assembled from it in chunks at the end.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Union

import numpy as np

from ..formats import read_versioned_json
from .export_sources import ExportError, Utterance
from .export_tables import utterance_ids
from .layout import LayoutError, LMTokens, TokenLayout

TOKENS_FORMAT = "speechtok.tokens"
TOKENS_FORMAT_VERSION = 1
MMAP_MAGIC = b"MMIDIDX\x00\x00"
MMAP_VERSION = 1
DTYPE_CODES = {"uint16": 8, "int32": 4}  # Megatron's DType enum values
HEADER_BYTES = 9 + 8 + 1 + 8 + 8
BIN, IDX, META, DOCS = "tokens.bin", "tokens.idx", "meta.json", "documents.jsonl"
CHUNK = 1 << 20  # index entries handled at a time


def stream_dtype(vocab_size: int) -> str:
    if vocab_size <= 1 << 16:
        return "uint16"
    if vocab_size <= 2**31 - 1:
        return "int32"
    raise ExportError(f"vocab_size {vocab_size} does not fit a Megatron token stream (int32 at most)")


class TokenStreamWriter:
    """Appends utterances' ids to ``tokens.bin``; `finish` writes ``tokens.idx`` and ``meta.json``."""

    def __init__(self, directory: Path, layout: TokenLayout, file_meta: dict):
        if not layout.flat:
            raise ExportError("format tokens: the layout must be flat (a single stream); parallel delay "
                              "streams fit Parquet (input_ids [K][L])")
        self.directory, self.layout, self.file_meta = directory, layout, file_meta
        self.dtype = stream_dtype(layout.vocab_size)
        self._bin = open(directory / BIN, "wb")
        self._sizes = open(directory / ".sizes.tmp-int32", "wb")
        self._docs = open(directory / DOCS, "w", encoding="utf-8")
        self.count, self.total = 0, 0

    def add(self, utt: Utterance) -> int:
        ids = utterance_ids(self.layout, utt)
        if len(ids) > 2**31 - 1:
            raise ExportError(f"{utt.origin}: item {utt.id!r} has {len(ids)} ids, more than a Megatron sequence holds")
        self._bin.write(ids.astype(self.dtype).tobytes())
        self._sizes.write(np.int32(len(ids)).tobytes())
        self._docs.write(json.dumps({"id": utt.id, "text": utt.text, "speaker": utt.speaker, "seconds": utt.seconds,
                                     "num_frames": utt.codes.num_frames, "num_tokens": len(ids)},
                                    ensure_ascii=False) + "\n")
        self.count += 1
        self.total += len(ids)
        return len(ids)

    def finish(self) -> list[str]:
        self.close()
        sizes_path = self.directory / ".sizes.tmp-int32"
        itemsize = np.dtype(self.dtype).itemsize
        n = self.count
        with open(self.directory / IDX, "wb") as f:
            f.write(MMAP_MAGIC + struct.pack("<Q", MMAP_VERSION) + struct.pack("<B", DTYPE_CODES[self.dtype]))
            f.write(struct.pack("<Q", n) + struct.pack("<Q", n + 1))
            with open(sizes_path, "rb") as s:  # sequence lengths, copied through
                while chunk := s.read(4 * CHUNK):
                    f.write(chunk)
            carry = 0
            with open(sizes_path, "rb") as s:  # byte pointers: exclusive cumsum, chunk by chunk
                while chunk := s.read(4 * CHUNK):
                    sz = np.frombuffer(chunk, np.int32).astype(np.int64) * itemsize
                    ptr = np.cumsum(sz) - sz + carry
                    carry += int(sz.sum())
                    f.write(ptr.tobytes())
            for a in range(0, n + 1, CHUNK):  # document indices 0..N
                f.write(np.arange(a, min(a + CHUNK, n + 1), dtype=np.int64).tobytes())
        sizes_path.unlink()
        meta = dict(self.file_meta, format=TOKENS_FORMAT, format_version=TOKENS_FORMAT_VERSION,
                    layout=self.layout.to_dict(), dtype=self.dtype, vocab_size=self.layout.vocab_size,
                    num_documents=n, num_tokens=self.total, bin=BIN, idx=IDX, documents=DOCS)
        (self.directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return [BIN, IDX, META, DOCS]

    def close(self):
        for f in (self._bin, self._sizes, self._docs):
            f.close()


def read_mmap_index(path: Union[str, os.PathLike]) -> dict:
    """Parse a Megatron ``.idx`` (checked against its own size): dtype, sizes, pointers, doc_idx (memmaps)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise ExportError(f"{path}: unreadable Megatron index ({e.strerror or e})") from e
    if len(head) < HEADER_BYTES or head[:9] != MMAP_MAGIC:
        raise ExportError(f"{path}: not a Megatron MMapIndexedDataset index (bad magic)")
    (version,) = struct.unpack("<Q", head[9:17])
    code = head[17]
    n, d = struct.unpack("<QQ", head[18:34])
    names = {v: k for k, v in DTYPE_CODES.items()}
    if version != MMAP_VERSION or code not in names:
        raise ExportError(f"{path}: Megatron index version {version} / dtype code {code} is not one this reads")
    if size != HEADER_BYTES + 12 * n + 8 * d:
        raise ExportError(f"{path}: truncated or corrupt Megatron index ({size} bytes for {n} sequences, "
                          f"{d} documents)")

    def arr(dtype, count, offset):
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,)) if count else np.zeros(0, dtype)

    return {"dtype": names[code], "sizes": arr(np.int32, n, HEADER_BYTES),
            "pointers": arr(np.int64, n, HEADER_BYTES + 4 * n), "doc_idx": arr(np.int64, d, HEADER_BYTES + 12 * n)}


class TokenStream:
    """Read a ``tokens`` export: ``len``, ``stream[i]`` (ids of utterance ``i``, a read-only
    ``[L_i]`` array of ``dtype``), ``ids`` (the whole ``.bin`` as one memmap), ``layout``,
    ``codes(i)`` (utterance ``i`` decoded back to `Codes`, ``B=1``).

    ``path``: the export directory or its ``meta.json``. Raises `ExportError` naming the file.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        path = Path(path)
        meta_path = path / META if path.is_dir() else path
        self.meta = read_versioned_json(meta_path, TOKENS_FORMAT, TOKENS_FORMAT_VERSION, ExportError, "token stream")
        try:
            self.layout = TokenLayout.from_dict(self.meta.get("layout"), str(meta_path))
        except LayoutError as e:
            raise ExportError(str(e)) from e
        base = meta_path.parent
        index = read_mmap_index(base / self.meta.get("idx", IDX))
        self.dtype = index["dtype"]
        if self.dtype != self.meta.get("dtype"):
            raise ExportError(f"{base / IDX}: dtype {self.dtype} differs from {self.meta.get('dtype')!r} "
                              f"in {meta_path}")
        self.sizes, self.pointers = index["sizes"], index["pointers"]
        bin_path = base / self.meta.get("bin", BIN)
        itemsize = np.dtype(self.dtype).itemsize
        want = int(self.sizes.astype(np.int64).sum()) * itemsize
        have = bin_path.stat().st_size if bin_path.is_file() else -1
        if have != want or len(self.sizes) != self.meta.get("num_documents"):
            raise ExportError(f"{bin_path}: {have} bytes, its index says {want} ({len(self.sizes)} sequences; "
                              f"meta.json {self.meta.get('num_documents')})")
        self.ids = np.memmap(bin_path, dtype=self.dtype, mode="r") if want else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"utterance {i} of {len(self)}")
        i = i % len(self)
        start = int(self.pointers[i]) // self.ids.itemsize
        return self.ids[start:start + int(self.sizes[i])]

    def codes(self, i: int, like=None):
        """Utterance ``i`` as `Codes` (``B=1``; metadata from the layout, or ``like``)."""
        import torch

        ids = torch.from_numpy(self[i].astype(np.int64))[None]
        return self.layout.decode(LMTokens(ids, torch.tensor([ids.shape[1]])), like=like)

