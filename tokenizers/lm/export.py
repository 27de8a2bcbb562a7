"""Training data for LM trainers: shards or ``.stok`` codes files -> Parquet, a token stream, units text, lhotse.

    >>> from speechtok.lm.export import export, read_export_layout
    >>> res = export("shards/", "lm-data/", format="parquet", layout={"pattern": "delay", "add_eos": True})
    >>> layout = read_export_layout("lm-data/")          # TokenLayout: decode input_ids back to Codes

Formats (each writes into the output directory ``out``):
    ``parquet``     ``data/part-*.parquet``: one row per utterance (id, codes ``[K][T]``, input_ids,
                    lengths, durations, seconds, text, speaker); ``datasets.load_dataset("parquet",
                    data_dir=out + "/data")``, pandas, pyarrow. See `speechtok.lm.export_tables`.
    ``tokens``      ``tokens.bin`` + ``tokens.idx`` (Megatron-LM ``MMapIndexedDataset``; the ``.bin``
                    alone is nanoGPT's ``train.bin``) + ``meta.json`` + ``documents.jsonl``; flat
                    layouts only.
                    Read back with `TokenStream`. See `speechtok.lm.export_tokens`.
    ``units-text``  ``units.txt``: ``<id>|<units>`` lines of one codebook (``codebook``, default 0: with
                    several codebooks only that one is written, the export records which), the
                    fairseq/GSLM unit format. No layout.
    ``lhotse``      ``cuts.jsonl.gz`` + ``codes/``: MonoCuts with supervision, recording and the codes
                    as a custom array (``cut.load_codes()``, ``[T, K]``). See `speechtok.lm.export_lhotse`.

Layout: ``layout`` is a `TokenLayout` (used as is, checked against the sources) or a dict of its
options (``pattern``, ``flat``, ``offset``, ``add_bos``, ``add_eos``) completed from the sources'
model; None means the defaults: flatten, no bos/eos, offset 0, except ``tokens`` where ``add_eos``
defaults to True (the eos separates documents in the stream). ``codebooks=K`` keeps the first K.

Output directory, streaming and reruns: everything is written into a temp folder inside ``out``
(``.export.tmp-*``), moved into place when complete, then ``export.json`` (format
``speechtok.export`` v1: format, layout, model id, counts, files, settings) is written last and
atomically: a directory without it holds no complete export. Rerunning with the same settings
and unchanged sources is a no-op (``ExportResult.skipped``); other settings, or a directory that
holds other files, are refused unless ``force``. Only what is provably an export's is ever removed:
the files a previous ``export.json`` lists (with ``force``), what an export interrupted while moving
its files into place had moved (its pending list), and temp files; ``force`` writes beside other
files but never over them. A failed export leaves the previous one as it was. One export per
directory at a time. Memory stays flat: one shard or codes file, and one Parquet row group, in
memory at a time. Throughput is about 1,500-5,000 utterances per second on one CPU core.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

from ..atomic import atomic_write_text, is_temp_file
from ..formats import read_versioned_json
from .export_sources import ExportError, ExportUsageError, SourceInfo, Utterance, iter_utterances, scan_sources
from .export_tables import ParquetWriter, UnitsTextWriter, read_parquet_meta, read_units_text
from .export_tokens import TokenStream, read_mmap_index
from .layout import LayoutError, TokenLayout

PathLike = Union[str, os.PathLike]
EXPORT_FORMAT = "speechtok.export"
EXPORT_FORMAT_VERSION = 1
EXPORT_FILE = "export.json"
FORMATS = ("parquet", "tokens", "units-text", "lhotse")
LAYOUT_OPTIONS = ("pattern", "flat", "offset", "add_bos", "add_eos")
# names each format writes at the top of ``out``
OUTPUT_NAMES = {"parquet": ("data",), "tokens": ("tokens.bin", "tokens.idx", "meta.json", "documents.jsonl"),
                "units-text": ("units.txt",), "lhotse": ("cuts.jsonl.gz", "codes")}
STAGING_PREFIX = ".export.tmp-"
PENDING_FILE = ".export.tmp-pending.json"  # names being moved into place (removed once export.json is written)

__all__ = ["ExportConfig", "ExportError", "ExportResult", "ExportUsageError", "FORMATS", "TokenStream", "Utterance",
           "export", "iter_utterances", "read_export", "read_export_layout", "read_mmap_index", "read_parquet_meta",
           "read_units_text", "scan_sources"]


@dataclass(frozen=True)
class ExportConfig:
    """Settings of an export (see the module docstring).

    Attributes:
        format: "parquet" | "tokens" | "units-text" | "lhotse".
        layout: None, a `TokenLayout`, or a dict of layout options (not for units-text).
        codebooks: keep the first K codebooks (None: all).
        codebook: units-text: the codebook written (None: 0).
        columns: parquet: "both" (codes and input_ids), "codes" or "ids".
        rows_per_file: parquet: rows per ``part-*.parquet`` file.
        row_group_rows: parquet: rows per row group (the unit held in memory).
    """

    format: Literal["parquet", "tokens", "units-text", "lhotse"] = "parquet"
    layout: Union[None, TokenLayout, dict] = None
    codebooks: Optional[int] = None
    codebook: Optional[int] = None
    columns: Literal["both", "codes", "ids"] = "both"
    rows_per_file: int = 100_000
    row_group_rows: int = 1000

    def check(self) -> None:
        if self.format not in FORMATS:
            raise ExportUsageError(f"format {self.format!r}: expected one of {', '.join(FORMATS)}")
        if self.format == "units-text" and self.layout is not None:
            raise ExportUsageError("format units-text writes codes of one codebook: it takes no layout")
        if self.codebook is not None and self.format != "units-text":
            raise ExportUsageError(f"codebook={self.codebook}: only for format units-text "
                                   "(codebooks=K keeps the first K)")
        if self.codebook is not None and self.codebook < 0:
            raise ExportUsageError(f"codebook={self.codebook}: must be >= 0")
        if self.columns not in ("both", "codes", "ids"):
            raise ExportUsageError(f"columns {self.columns!r}: expected both, codes or ids")
        for name in ("rows_per_file", "row_group_rows", "codebooks"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ExportUsageError(f"{name}={v!r}: must be an integer >= 1")
        if isinstance(self.layout, dict):
            extra = sorted(set(self.layout) - set(LAYOUT_OPTIONS))
            if extra:
                raise ExportUsageError(f"layout options {extra}: unknown (known: {', '.join(LAYOUT_OPTIONS)})")
        elif self.layout is not None and not isinstance(self.layout, TokenLayout):
            raise ExportUsageError(f"layout must be None, a TokenLayout or a dict, got {type(self.layout).__name__}")


@dataclass(frozen=True)
class ExportResult:
    """What `export` did. ``files`` are relative to ``out``; ``num_tokens`` counts LM ids (units for
    units-text, 0 for lhotse); ``skipped``: an identical complete export was already there."""

    out: Path
    format: str
    files: tuple[str, ...]
    num_utterances: int
    num_frames: int
    num_tokens: int
    seconds: float
    model_id: str
    layout: Optional[TokenLayout]
    skipped: bool = False
    notes: tuple[str, ...] = ()


def resolve_layout(cfg: ExportConfig, info: SourceInfo) -> Optional[TokenLayout]:
    """The layout of the export (None for units-text), built from/checked against ``info``."""
    if cfg.format == "units-text":
        return None
    if isinstance(cfg.layout, TokenLayout):
        lay = cfg.layout
        k = lay.num_codebooks
        if cfg.codebooks not in (None, k) or tuple(info.codebook_sizes[:k]) != lay.codebook_sizes or \
                k > len(info.codebook_sizes):
            raise ExportUsageError(f"layout is for codebook sizes {list(lay.codebook_sizes)}, the sources have "
                              f"{list(info.codebook_sizes)}")
        if lay.model_id is not None and lay.model_id != info.model_id:
            raise ExportUsageError(f"layout is for model {lay.model_id!r}, the sources were made by {info.model_id!r}")
    else:
        opts = {"add_eos": True} if cfg.format == "tokens" else {}
        opts.update(cfg.layout or {})
        try:
            lay = TokenLayout(codebook_sizes=info.codebook_sizes, model_id=info.model_id,
                              frame_rate=info.frame_rate, sample_rate=info.sample_rate,
                              n_semantic=info.n_semantic, **opts)
        except (TypeError, ValueError) as e:
            raise ExportUsageError(f"layout: {e}") from e
    if cfg.format == "tokens" and not lay.flat:
        raise ExportUsageError("format tokens: the layout must be flat (a single stream); parallel delay streams "
                          "fit format parquet")
    return lay


def _settings(cfg: ExportConfig, info: SourceInfo, layout: Optional[TokenLayout]) -> dict:
    s = {"format": cfg.format, "layout": layout.to_dict() if layout else None, "codebooks": len(info.codebook_sizes),
         "sources": list(info.sources), "sources_fingerprint": info.fingerprint}
    if cfg.format == "parquet":
        s.update(columns=cfg.columns, rows_per_file=cfg.rows_per_file, row_group_rows=cfg.row_group_rows)
    if cfg.format == "units-text":
        s["codebook"] = cfg.codebook or 0
    return s


def read_export(out: PathLike) -> dict:
    """The checked ``export.json`` of an export directory (raises `ExportError` naming it)."""
    rec = read_versioned_json(Path(out) / EXPORT_FILE, EXPORT_FORMAT, EXPORT_FORMAT_VERSION, ExportError, "export")
    if not isinstance(rec.get("files"), list) or not isinstance(rec.get("settings"), dict):
        raise ExportError(f"{Path(out) / EXPORT_FILE}: export record lacks 'files' or 'settings'")
    return rec


def read_export_layout(path: PathLike) -> TokenLayout:
    """The `TokenLayout` an export was made with: from an export directory (``export.json``), an
    exported ``.parquet`` file (its schema metadata) or a token stream's ``meta.json``."""
    path = Path(path)
    if path.is_dir():
        where, d = path / EXPORT_FILE, read_export(path).get("layout")
    elif path.suffix == ".parquet":
        where, d = path, read_parquet_meta(path).get("layout")
    else:
        where, d = path, TokenStream(path).meta.get("layout")
    if d is None:
        raise ExportError(f"{where}: this export has no token layout (units-text)")
    try:
        return TokenLayout.from_dict(d, str(where))
    except LayoutError as e:
        raise ExportError(str(e)) from e


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _entries(files) -> list[str]:
    """The top-level names of ``files`` (relative paths), in order: what an export moves and removes."""
    out = []
    for f in files:
        top = str(f).split("/", 1)[0]
        if top not in out and top not in ("", ".", "..") and top != EXPORT_FILE:
            out.append(top)
    return out


def _drop_pending(out: Path) -> None:
    """Remove what an export that died while moving its files into place had moved (its pending list)."""
    pending = out / PENDING_FILE
    if not pending.exists():
        return
    try:
        names = json.loads(pending.read_text())
    except (OSError, ValueError):
        names = []
    for name in _entries(names if isinstance(names, list) else []):
        _remove(out / name)
    pending.unlink()


def _prepare(out: Path, cfg: ExportConfig, settings: dict, force: bool) -> tuple[Optional[dict], list[str]]:
    """Check ``out`` before an export: ``(record, [])`` when it already holds this very export, else
    ``(None, names)``: the previous export's names, replaced only once the new one is complete.

    Nothing is removed here but temp files and what an interrupted export left (its pending list).
    """
    if out.exists() and not out.is_dir():
        raise ExportUsageError(f"{out}: exists and is not a directory")
    if not out.exists():
        return None, []
    rec, old = None, []
    if (out / EXPORT_FILE).exists():
        try:
            rec = read_export(out)
        except ExportError:
            if not force:
                raise
        old = [EXPORT_FILE]
    if rec is not None:
        (out / PENDING_FILE).unlink(missing_ok=True)  # stale: its export finished (export.json is there)
        if rec["settings"] == settings and all((out / f).exists() for f in rec["files"]):
            return rec, []
        if not force:
            diff = sorted(k for k in set(settings) | set(rec["settings"]) if settings.get(k) != rec["settings"].get(k))
            why = "missing files" if not diff else f"other {', '.join(diff)}"
            raise ExportUsageError(f"{out / EXPORT_FILE}: holds an export with {why}; use force (--force) to replace "
                                   "it, or another output directory")
        old += _entries(rec["files"])
    else:
        _drop_pending(out)
    for p in out.iterdir():
        if is_temp_file(p):
            _remove(p)  # temp files and staging folders of runs that died
    left = sorted(p.name for p in out.iterdir() if p.name not in old)
    if left and not force:
        raise ExportUsageError(f"{out}: not empty and not a speechtok export (holds {left[0]}); use an empty "
                               "directory, or force (--force) to write beside those files")
    clash = sorted(set(left) & set(OUTPUT_NAMES[cfg.format]))
    if clash:
        raise ExportUsageError(f"{out / clash[0]}: exists and is not part of an export; remove it or use another "
                               "output directory")
    return None, old


def _commit(out: Path, staging: Path, files: list[str], old: list[str]) -> None:
    """Replace the previous export (``old`` names, export.json first) by the staged ``files``; a
    crash in between leaves the pending list, which the next run uses to clean up."""
    atomic_write_text(out / PENDING_FILE, json.dumps(old + [f for f in files if f not in old]))
    for name in old:
        _remove(out / name)
    for name in _entries(files):
        os.replace(staging / name, out / name)


def _writer(cfg: ExportConfig, staging: Path, out: Path, layout, info: SourceInfo, file_meta: dict):
    if cfg.format == "parquet":
        return ParquetWriter(staging, layout, file_meta, cfg.columns, cfg.rows_per_file, cfg.row_group_rows)
    if cfg.format == "tokens":
        from .export_tokens import TokenStreamWriter

        return TokenStreamWriter(staging, layout, file_meta)
    if cfg.format == "units-text":
        k = cfg.codebook or 0
        if k >= len(info.codebook_sizes):
            raise ExportUsageError(f"codebook={k}: the sources have {len(info.codebook_sizes)} codebooks (0..."
                              f"{len(info.codebook_sizes) - 1})")
        return UnitsTextWriter(staging, k)
    import numpy as np

    from .export_lhotse import LhotseWriter

    dtype = np.int16 if max(info.codebook_sizes) <= 32768 else np.int32
    return LhotseWriter(staging, out, info.model_id, info.frame_rate, dtype)


def export(sources: Union[PathLike, Sequence[PathLike]], out: PathLike, format: str = "parquet", *,
           layout: Union[None, TokenLayout, dict] = None, codebooks: Optional[int] = None,
           codebook: Optional[int] = None, force: bool = False, config: Optional[ExportConfig] = None,
           **options) -> ExportResult:
    """Export ``sources`` (shard directories, ``.stok`` files or folders of them) to ``out``.

    ``config`` (an `ExportConfig`) replaces ``format``/``layout``/``codebooks``/``codebook``/
    ``options`` (``columns``, ``rows_per_file``, ``row_group_rows``). Raises `ExportError`
    (``"<file>: <problem>"``) for bad sources, options or output directories; nothing partial is
    left in ``out`` (see the module docstring).
    """
    from .. import __version__

    cfg = config or ExportConfig(format=format, layout=layout, codebooks=codebooks, codebook=codebook, **options)
    cfg.check()
    out = Path(out)
    k = cfg.codebooks
    if isinstance(cfg.layout, TokenLayout):
        if k not in (None, cfg.layout.num_codebooks):
            raise ExportUsageError(f"codebooks={k}: the layout given has {cfg.layout.num_codebooks} codebooks")
        k = cfg.layout.num_codebooks
    info, entries = scan_sources(sources, k)
    if any(os.path.realpath(out) == os.path.realpath(src) for src in info.sources):
        raise ExportUsageError(f"{out}: is one of the sources; write the export to another directory")
    lay = resolve_layout(cfg, info)
    settings = _settings(cfg, info, lay)
    same, old = _prepare(out, cfg, settings, force)
    if same is not None:
        c = same["counts"]
        return ExportResult(out, cfg.format, tuple(same["files"]), c["utterances"], c["frames"], c["tokens"],
                            c["seconds"], info.model_id, lay, skipped=True)
    if cfg.format == "lhotse":
        from .export_lhotse import import_lhotse

        import_lhotse()  # fail before anything is written
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    file_meta = {"model_id": info.model_id, "codebook_sizes": list(info.codebook_sizes),
                 "frame_rate": info.frame_rate, "sample_rate": info.sample_rate, "n_semantic": info.n_semantic,
                 "speechtok_version": __version__}
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    n = frames = tokens = 0
    seconds = 0.0
    writer = None
    try:
        writer = _writer(cfg, staging, out, lay, info, file_meta)
        for utt in iter_utterances(entries, info):
            tokens += writer.add(utt)
            n += 1
            frames += utt.codes.num_frames
            seconds += utt.seconds
        files = writer.finish()
        notes = tuple(writer.notes()) if hasattr(writer, "notes") else ()
        counts = {"utterances": n, "frames": frames, "tokens": tokens, "seconds": round(seconds, 6)}
        rec = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "export_format": cfg.format,
               "layout": settings["layout"], **file_meta, "counts": counts, "files": files, "settings": settings}
        _commit(out, staging, files, old)
        atomic_write_text(out / EXPORT_FILE, json.dumps(rec, indent=2, sort_keys=True) + "\n")  # last
        (out / PENDING_FILE).unlink(missing_ok=True)
    except OSError as e:
        raise ExportError(f"{getattr(e, 'filename', None) or out}: cannot write ({e.strerror or e})") from e
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        if created and not (out / EXPORT_FILE).exists() and not any(out.iterdir()):
            out.rmdir()  # a failed export into a new directory leaves nothing
    if cfg.format == "units-text" and len(info.codebook_sizes) > 1:
        notes += (f"wrote codebook {cfg.codebook or 0} of {len(info.codebook_sizes)}",)
    return ExportResult(out, cfg.format, tuple(files), n, frames, tokens, counts["seconds"], info.model_id, lay,
                        notes=notes)
