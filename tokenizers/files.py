"""File-level encode/decode: the Python API behind ``speechtok encode`` / ``decode``.

Inputs are files or directories (a directory's tree is mirrored under the output folder).
Existing outputs are skipped unless ``force`` (so an interrupted run resumes); every output is
written atomically; a bad input is reported in `FilesReport.failed` and the rest still done.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

from .audio import AudioError, audio_info, fit_channels, is_audio_file, load_audio, save_audio
from .codesfile import EXTENSION, CodesFileError, load_codes, read_codes_metadata, save_codes

PathLike = Union[str, os.PathLike]


@dataclass
class FilesReport:
    """What an encode/decode run did: outputs written, skipped (already there), failed (path, error)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def plan_outputs(inputs: Sequence[PathLike], output: PathLike, is_input, out_suffix: str) -> list[tuple[Path, Path]]:
    """Pair each input file with its output path.

    A file input ``f`` goes to ``output/<f.stem><out_suffix>``; a directory input ``d`` has each
    matching file ``d/x/y.ext`` go to ``output/x/y<out_suffix>``. A single file input whose
    ``output`` already ends in ``out_suffix`` is written exactly there.
    """
    output = Path(output)
    pairs: list[tuple[Path, Path]] = []
    for inp in map(Path, inputs):
        if inp.is_dir():
            for p in sorted(inp.rglob("*")):
                if p.is_file() and is_input(p):
                    pairs.append((p, (output / p.relative_to(inp)).with_suffix(out_suffix)))
        elif len(inputs) == 1 and output.suffix == out_suffix:
            pairs.append((inp, output))
        else:
            pairs.append((inp, output / (inp.stem + out_suffix)))
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        if dst in seen:
            raise ValueError(f"{src} and {seen[dst]} would both be written to {dst}")
        seen[dst] = src
    return pairs


def _progress(items: Iterable, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="file", disable=not enabled)


def _chunks(seq: list, n: int) -> Iterable[list]:
    for i in range(0, len(seq), max(1, n)):
        yield seq[i:i + max(1, n)]


LONG_FILE_SECONDS = 120.0


def encode_files(inputs: Sequence[PathLike], output: PathLike, tokenizer=None, num_codebooks: Optional[int] = None,
                 batch_size: int = 8, force: bool = False, progress: bool = True,
                 long_file_seconds: float = LONG_FILE_SECONDS) -> FilesReport:
    """Encode audio files/directories to ``.stok`` codes files under ``output``.

    Args:
        tokenizer: a speechtok tokenizer, or a model name/path for `speechtok.load` (None: default;
            loaded with ``encoder_only=True``, as nothing is decoded).
        num_codebooks: keep the first k codebooks (lower bitrate).
        batch_size: files encoded together (padded with ``lengths``; results equal per-file ones).
        long_file_seconds: files longer than this are encoded alone, streamed from disk in blocks
            (`CodecTokenizer.encode_file`), so memory stays flat for hour-long files; same codes.
    """
    from .registry import load

    tok = tokenizer if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)) \
        else load(tokenizer, encoder_only=True)
    streams = hasattr(tok, "encode_file")
    report = FilesReport()
    pairs = plan_outputs(inputs, output, is_audio_file, EXTENSION)
    todo = []
    for src, dst in pairs:
        if dst.exists() and not force:
            report.skipped.append(dst)
        else:
            todo.append((src, dst))
    bar = _progress(None, len(todo), "encode", progress)
    for chunk in _chunks(todo, batch_size):
        wavs, ok = [], []
        for src, dst in chunk:
            try:
                if streams:
                    frames, rate, _ = audio_info(src)
                    if frames / rate > long_file_seconds:
                        codes = tok.encode_file(src, num_codebooks=num_codebooks)
                        save_codes(dst, codes, source=str(src))
                        report.written.append(dst)
                        bar.update(1)
                        continue
                w = load_audio(src, sample_rate=tok.sample_rate, mono=tok.channels == 1)[0]
                wavs.append(fit_channels(src, w, tok.channels))
                ok.append((src, dst))
            except AudioError as e:
                report.failed.append((src, str(e)))
            bar.update(1)
        if not ok:
            continue
        lengths = torch.tensor([w.shape[-1] for w in wavs])
        batch = torch.zeros(len(wavs), wavs[0].shape[0], int(lengths.max()))
        for i, w in enumerate(wavs):
            batch[i, :, : w.shape[-1]] = w
        codes = tok.encode(batch, sample_rate=tok.sample_rate, lengths=lengths, num_codebooks=num_codebooks)
        for (src, dst), item in zip(ok, codes.unbatch()):
            save_codes(dst, item.to("cpu"), source=str(src))
            report.written.append(dst)
    bar.close()
    return report


def decode_files(inputs: Sequence[PathLike], output: PathLike, tokenizer=None, force: bool = False,
                 audio_format: str = "wav", progress: bool = True) -> FilesReport:
    """Decode ``.stok`` files/directories to audio files under ``output``.

    ``tokenizer`` None loads the built-in model named in each file's ``model_id``; codes made by
    another model than the tokenizer given fail (reported per file).
    """
    from .registry import BUILTINS, load

    report = FilesReport()
    pairs = plan_outputs(inputs, output, lambda p: p.suffix == EXTENSION, "." + audio_format.lstrip("."))
    cache: dict[str, object] = {}
    if tokenizer is not None and isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load(tokenizer)
    for src, dst in _progress(pairs, len(pairs), "decode", progress):
        if dst.exists() and not force:
            report.skipped.append(dst)
            continue
        try:
            tok = tokenizer
            if tok is None:
                name = read_codes_metadata(src)["model_id"].split("@")[0]
                if name not in BUILTINS:
                    raise CodesFileError(f"{src}: made by {name!r}, not a built-in model: pass the model (--model)")
                tok = cache.setdefault(name, load(name))
            codes = load_codes(src, expect_model_id=tok.model_id)
            wav = tok.decode(codes)
            n = int(wav.lengths[0]) if codes.audio_lengths is None else min(int(codes.audio_lengths[0]),
                                                                                int(wav.lengths[0]))
            save_audio(dst, wav.audio[0, :, :n], wav.sample_rate)
            report.written.append(dst)
        except (CodesFileError, AudioError, ValueError) as e:
            report.failed.append((src, str(e)))
    return report


def codes_info(path: PathLike) -> dict:
    """Metadata of a codes file plus duration (s), frames, nominal and entropy bitrate (bit/s)."""
    codes = load_codes(path)
    meta = read_codes_metadata(path)
    secs = float(codes.seconds().sum())
    return {**meta, "path": str(path), "batch": codes.batch_size, "num_codebooks": codes.num_codebooks,
            "frames": codes.lengths.tolist(), "seconds": round(secs, 4), "bitrate": round(codes.bitrate(), 2),
            "entropy_bitrate": round(codes.entropy_bitrate(), 2)}
