"""Row-per-utterance exports: Parquet (Hugging Face `datasets`, pandas, Spark...) and fairseq/GSLM units text.

Parquet (``data/part-00000.parquet``, ``data/part-00001.parquet``, ... at most ``rows_per_file`` rows each,
written in row groups of at most ``row_group_rows`` rows, so memory stays flat). Columns:

    id           string
    codes        list<list<int32>>  ``[K][T]`` the codes (``columns`` "codes" or "both")
    input_ids    list<int32> ``[L]`` (flat layouts) or list<list<int32>> ``[K][L]`` (parallel delay):
                 the layout's LM ids (``columns`` "ids" or "both"; int64 when the vocabulary needs it)
    num_frames   int32  T
    num_tokens   int32  L (the layout's sequence length, bos/eos included)
    durations    list<int32> ``[T]`` grid frames per token, null when the codes have none
    seconds      float64 audio duration
    text, speaker, audio_path   string or null

The schema metadata key ``speechtok`` holds JSON: format ``speechtok.export.parquet`` version 1,
the model id, codebook sizes, frame and sample rate, speechtok version and the layout
(`TokenLayout.to_dict`): `read_parquet_meta` / `read_export_layout` give them back.

Units text (``units.txt``): one line per utterance, ``<id>|<u0> <u1> ...``: the codes of one
codebook, space-separated (the ``id|units`` files fairseq's GSLM speech2unit writes and its
unit-to-speech and unit LM recipes read). Nothing is deduplicated here (unit tokenizers dedup
already); durations are not kept.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from .export_sources import ExportError, Utterance
from .layout import TokenLayout

PARQUET_FORMAT = "speechtok.export.parquet"
PARQUET_FORMAT_VERSION = 1
PARQUET_META_KEY = b"speechtok"
PARQUET_DIR = "data"  # the parts sit in their own folder: pyarrow/datasets read it as one dataset
UNITS_FILE = "units.txt"
MAX_BUFFERED_VALUES = 4 << 20  # ints buffered before a row group is flushed (whatever its row count)


def part_name(n: int) -> str:
    return f"{PARQUET_DIR}/part-{n:05d}.parquet"


def utterance_ids(layout: TokenLayout, utt: Utterance) -> np.ndarray:
    """The layout's ids of one utterance: int64 ``[L]`` (flat) or ``[K, L]`` (parallel)."""
    lm = layout.encode(utt.codes)
    return lm.tokens[0, ..., : int(lm.lengths[0])].numpy()


def _list_array(pa, rows: list[np.ndarray], dtype):
    """list<int> (rows 1-d) or list<list<int>> (rows 2-d ``[K, L]``) from numpy rows, no Python ints."""
    if rows and rows[0].ndim == 2:
        inner = [r.shape[1] for r in rows for _ in range(r.shape[0])]
        inner_off = np.zeros(len(inner) + 1, np.int32)
        np.cumsum(inner, out=inner_off[1:])
        values = np.concatenate([r.reshape(-1) for r in rows]).astype(dtype, copy=False)
        outer_off = np.zeros(len(rows) + 1, np.int32)
        np.cumsum([r.shape[0] for r in rows], out=outer_off[1:])
        return pa.ListArray.from_arrays(pa.array(outer_off),
                                        pa.ListArray.from_arrays(pa.array(inner_off), pa.array(values)))
    off = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([len(r) for r in rows], out=off[1:])
    values = np.concatenate(rows).astype(dtype, copy=False) if rows else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(off), pa.array(values))


class ParquetWriter:
    """Streams utterances into ``directory/data/part-*.parquet`` (see the module docstring)."""

    def __init__(self, directory: Path, layout: TokenLayout, file_meta: dict, columns: str = "both",
                 rows_per_file: int = 100_000, row_group_rows: int = 1000):
        import pyarrow as pa

        self.pa, self.directory, self.layout = pa, directory, layout
        (directory / PARQUET_DIR).mkdir(exist_ok=True)
        self.with_codes, self.with_ids = columns in ("both", "codes"), columns in ("both", "ids")
        self.rows_per_file, self.row_group_rows = rows_per_file, row_group_rows
        self.id_dtype = np.int32 if layout.vocab_size <= 2**31 - 1 else np.int64
        ids_type = pa.list_(pa.int32() if self.id_dtype == np.int32 else pa.int64())
        fields = [pa.field("id", pa.string(), nullable=False)]
        if self.with_codes:
            fields.append(pa.field("codes", pa.list_(pa.list_(pa.int32()))))
        if self.with_ids:
            fields.append(pa.field("input_ids", ids_type if layout.flat else pa.list_(ids_type)))
        fields += [pa.field("num_frames", pa.int32()), pa.field("num_tokens", pa.int32()),
                   pa.field("durations", pa.list_(pa.int32())), pa.field("seconds", pa.float64()),
                   pa.field("text", pa.string()), pa.field("speaker", pa.string()),
                   pa.field("audio_path", pa.string())]
        meta = dict(file_meta, format=PARQUET_FORMAT, format_version=PARQUET_FORMAT_VERSION, layout=layout.to_dict())
        self.schema = pa.schema(fields, metadata={PARQUET_META_KEY: json.dumps(meta, sort_keys=True)})
        self.files: list[str] = []
        self._writer, self._rows_in_file = None, 0
        self._reset()

    def _reset(self):
        self._buf = {name: [] for name in self.schema.names}
        self._values = 0

    def add(self, utt: Utterance) -> int:
        """Buffer one utterance (flushing a row group when full); returns its number of LM ids."""
        codes = utt.codes.codes[0].numpy().astype(np.int32)
        ids = utterance_ids(self.layout, utt).astype(self.id_dtype)
        b = self._buf
        b["id"].append(utt.id)
        if self.with_codes:
            b["codes"].append(codes)
        if self.with_ids:
            b["input_ids"].append(ids)
        b["num_frames"].append(codes.shape[1])
        b["num_tokens"].append(ids.shape[-1])
        b["durations"].append(None if utt.codes.durations is None else utt.codes.durations[0].numpy())
        b["seconds"].append(utt.seconds)
        b["text"].append(utt.text)
        b["speaker"].append(utt.speaker)
        b["audio_path"].append(utt.audio_path)
        self._values += codes.size * self.with_codes + ids.size * self.with_ids
        if len(b["id"]) >= self.row_group_rows or self._values >= MAX_BUFFERED_VALUES or \
                self._rows_in_file + len(b["id"]) >= self.rows_per_file:
            self._flush()
        return int(ids.shape[-1])

    def _open(self):
        import pyarrow.parquet as pq

        name = part_name(len(self.files))
        self._writer = pq.ParquetWriter(str(self.directory / name), self.schema, compression="zstd")
        self.files.append(name)
        self._rows_in_file = 0

    def _flush(self):
        pa, b = self.pa, self._buf
        if not b["id"]:
            return
        durs = b["durations"]
        if all(d is None for d in durs):
            dur_col = pa.nulls(len(durs), pa.list_(pa.int32()))
        else:
            dur_col = pa.array([None if d is None else d.astype(np.int32) for d in durs], pa.list_(pa.int32()))
        cols = {"id": pa.array(b["id"], pa.string()), "durations": dur_col,
                "num_frames": pa.array(b["num_frames"], pa.int32()),
                "num_tokens": pa.array(b["num_tokens"], pa.int32()),
                "seconds": pa.array(b["seconds"], pa.float64())}
        if self.with_codes:
            cols["codes"] = _list_array(pa, b["codes"], np.int32)
        if self.with_ids:
            cols["input_ids"] = _list_array(pa, b["input_ids"], self.id_dtype)
        for name in ("text", "speaker", "audio_path"):
            cols[name] = pa.array(b[name], pa.string())
        table = pa.Table.from_arrays([cols[n] for n in self.schema.names], schema=self.schema)
        if self._writer is None:
            self._open()
        self._writer.write_table(table)
        self._rows_in_file += table.num_rows
        self._reset()
        if self._rows_in_file >= self.rows_per_file:
            self._writer.close()
            self._writer, self._rows_in_file = None, 0

    def finish(self) -> list[str]:
        """Flush and close; returns the file paths relative to ``directory`` (one empty file when there
        were no rows)."""
        self._flush()
        if self._writer is None and not self.files:
            self._open()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return list(self.files)

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_parquet_meta(path) -> dict:
    """The ``speechtok`` schema metadata of an exported Parquet file (checked format tag/version)."""
    import pyarrow.parquet as pq

    from ..formats import check_format

    try:
        meta = pq.read_schema(str(path)).metadata or {}
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ExportError(f"{path}: not a readable Parquet file ({e})") from e
    if PARQUET_META_KEY not in meta:
        raise ExportError(f"{path}: not a speechtok export (no 'speechtok' schema metadata)")
    try:
        d = json.loads(meta[PARQUET_META_KEY])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: corrupt speechtok schema metadata ({e})") from e
    return check_format(d, path, PARQUET_FORMAT, PARQUET_FORMAT_VERSION, ExportError, "Parquet export")


class UnitsTextWriter:
    """Streams ``<id>|<units>`` lines of codebook ``codebook`` into ``directory/units.txt``."""

    def __init__(self, directory: Path, codebook: int):
        self.codebook = codebook
        self.path = directory / UNITS_FILE
        self._f = open(self.path, "w", encoding="utf-8", newline="\n")

    def add(self, utt: Utterance) -> int:
        if "|" in utt.id or not utt.id.isprintable() or utt.id != utt.id.strip():
            raise ExportError(f"{utt.origin}: item id {utt.id!r} holds '|', a line break or surrounding blanks: "
                              "it cannot be a units-text id")
        row = utt.codes.codes[0, self.codebook].tolist()
        self._f.write(f"{utt.id}|{' '.join(map(str, row))}\n")
        return len(row)

    def finish(self) -> list[str]:
        self._f.close()
        return [UNITS_FILE]

    def close(self):
        self._f.close()


def read_units_text(path) -> Iterator[tuple[str, np.ndarray]]:
    """``(id, units int64 [T])`` for each line of a units-text file (raises `ExportError` naming the line)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            uid, sep, units = line.rstrip("\n").partition("|")
            try:
                if not sep:
                    raise ValueError("no '|'")
                yield uid, np.array([int(u) for u in units.split()], dtype=np.int64)
            except ValueError as e:
                raise ExportError(f"{path}: line {n}: not '<id>|<units>' ({e})") from e

