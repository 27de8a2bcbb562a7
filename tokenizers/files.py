"""File-level encode/decode: the Python API behind ``speechtok encode`` / ``decode``.

Inputs are files or directories (a directory's tree is mirrored under the output folder; leftover
temp files of interrupted writes, ``.<name>.tmp-*``, are never taken as inputs). Existing outputs
are kept unless ``force`` (so an interrupted run resumes), but only when they are complete, valid
and made with the same model, settings and source; any other is reported in `FilesReport.redone`
and redone. Every output is written atomically; a bad input is reported in `FilesReport.failed`
and the rest still done. Misuse (outputs that collide or overwrite an input, bad options) is a
`FilesError` raised before anything is written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

from .atomic import is_temp_file
from .audio import (AudioError, audio_info, fit_channels, is_audio_file, is_unsupported_audio, load_audio,
                    resample, save_audio)
from .codes import CodesError
from .codesfile import EXTENSION, CodesFileError, load_codes, read_codes, read_codes_metadata, save_codes

PathLike = Union[str, os.PathLike]


class FilesError(ValueError):
    """The inputs, output or options of an encode/decode run do not fit together (nothing was written)."""


@dataclass
class FilesReport:
    """What an encode/decode run did: outputs written, skipped (already there and valid), redone
    (already there but stale or broken: output, reason), failed (input, error)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    redone: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def plan_outputs(inputs: Sequence[PathLike], output: PathLike, is_input, out_suffix: str) -> list[tuple[Path, Path]]:
    """Pair each input file with its output path.

    A file input ``f`` goes to ``output/<f.stem><out_suffix>``; a directory input ``d`` has each
    matching file ``d/x/y.ext`` go to ``output/x/y<out_suffix>`` (temp files skipped). A single file
    input whose ``output`` already ends in ``out_suffix`` is written exactly there.

    Raises `FilesError` when ``output`` is an input or an existing non-directory where a folder is
    needed, when an output would overwrite an input, or when two inputs map to one output.
    """
    output = Path(output)
    ins = [Path(i) for i in inputs]
    single = len(ins) == 1 and not ins[0].is_dir() and output.suffix == out_suffix
    if any(_same(output, i) for i in ins):
        raise FilesError(f"-o {output}: the output is one of the inputs; choose another output")
    if not single and output.exists() and not output.is_dir():
        raise FilesError(f"-o {output}: exists and is not a directory (an output folder is needed here)")
    pairs: list[tuple[Path, Path]] = []
    for inp in ins:
        if inp.is_dir():
            for p in sorted(inp.rglob("*")):
                if p.is_file() and is_input(p) and not is_temp_file(p):
                    pairs.append((p, (output / p.relative_to(inp)).with_suffix(out_suffix)))
        elif single:
            pairs.append((inp, output))
        else:
            pairs.append((inp, output / (inp.stem + out_suffix)))
    seen: dict[Path, Path] = {}
    sources = {p.resolve() for p, _ in pairs}
    for src, dst in pairs:
        key = dst.resolve()
        if key in sources:
            raise FilesError(f"{dst}: the output for {src} would overwrite an input")
        if key in seen:
            raise FilesError(f"{src} and {seen[key]} would both be written to {dst}: rename one or run them apart")
        seen[key] = src
    return pairs


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _progress(items: Iterable, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="file", disable=not enabled)


def _chunks(seq: list, n: int) -> Iterable[list]:
    for i in range(0, len(seq), max(1, n)):
        yield seq[i:i + max(1, n)]


def _problem(e: Exception, path: Path) -> str:
    """An error's message without the leading ``"<path>: "``."""
    s = str(e)
    return s[len(str(path)) + 2:] if s.startswith(f"{path}: ") else s


def _same_source(recorded, src: Path) -> bool:
    return recorded == str(src) or (isinstance(recorded, str) and Path(recorded).resolve() == src.resolve())


def stale_codes_reason(dst: Path, src: Path, model_id: str, num_codebooks: int,
                       info: tuple[int, int, int]) -> Optional[str]:
    """Why the existing codes file ``dst`` is not a finished output of ``src`` encoded by ``model_id``
    with ``num_codebooks`` codebooks (``info``: `audio_info` of ``src``); None if it is."""
    try:
        codes, meta = read_codes(dst)
    except CodesFileError as e:
        return _problem(e, dst)
    if meta["model_id"] != model_id:
        return f"made by model {meta['model_id']!r}, not {model_id!r}"
    if codes.num_codebooks != num_codebooks:
        return f"has {codes.num_codebooks} codebooks, this run keeps {num_codebooks}"
    if not _same_source(meta.get("source"), src):
        return f"made from {meta.get('source')!r}, not {str(src)!r}"
    frames, rate, channels = info
    recorded = (meta.get("source_frames"), meta.get("source_sample_rate"), meta.get("source_channels"))
    if recorded != (None, None, None) and recorded != (frames, rate, channels):
        return f"made from a different version of {src} (frames, rate, channels {recorded} != {info})"
    return None


LONG_FILE_SECONDS = 120.0


def _check_encode_args(tok, num_codebooks, batch_size) -> int:
    """The number of codebooks kept (checked against the model); raises `FilesError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FilesError(f"batch_size (--batch-size) must be an integer >= 1, got {batch_size!r}")
    k = tok.num_codebooks if num_codebooks is None else num_codebooks
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= tok.num_codebooks:
        raise FilesError(f"num_codebooks (--codebooks) must be an integer in [1, {tok.num_codebooks}] for "
                         f"{tok.model_id}, got {num_codebooks!r}")
    return k


def encode_files(inputs: Sequence[PathLike], output: PathLike, tokenizer=None, num_codebooks: Optional[int] = None,
                 batch_size: int = 8, force: bool = False, progress: bool = True,
                 long_file_seconds: float = LONG_FILE_SECONDS) -> FilesReport:
    """Encode audio files/directories to ``.stok`` codes files under ``output``.

    Args:
        tokenizer: a speechtok tokenizer, or a model name/path for `speechtok.load` (None: default;
            loaded with ``encoder_only=True``, as nothing is decoded).
        num_codebooks: keep the first k codebooks (lower bitrate), ``1 <= k <= K``.
        batch_size: files encoded together (padded with ``lengths``; results equal per-file ones).
        long_file_seconds: files longer than this are encoded alone, streamed from disk in blocks
            (`CodecTokenizer.encode_file`), so memory stays flat for hour-long files; same codes.

    Each file records its source's rate, channels and length (``source_sample_rate``,
    ``source_channels``, ``source_frames``), so `decode_files` can restore them.
    """
    from .registry import load

    is_input = lambda p: is_audio_file(p) or is_unsupported_audio(p)  # noqa: E731 (unsupported: reported)
    pairs = plan_outputs(inputs, output, is_input, EXTENSION)
    tok = tokenizer if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)) \
        else load(tokenizer, encoder_only=True)
    k = _check_encode_args(tok, num_codebooks, batch_size)
    streams = hasattr(tok, "encode_file")
    report = FilesReport()
    todo = []
    for src, dst in pairs:
        try:
            info = audio_info(src)
        except AudioError as e:
            report.failed.append((src, str(e)))
            continue
        if dst.exists() and not force:
            reason = stale_codes_reason(dst, src, tok.model_id, k, info)
            if reason is None:
                report.skipped.append(dst)
                continue
            report.redone.append((dst, reason))
        todo.append((src, dst, info))
    bar = _progress(None, len(todo), "encode", progress)
    for chunk in _chunks(todo, batch_size):
        wavs, ok = [], []
        for src, dst, info in chunk:
            extra = {"source_frames": info[0], "source_sample_rate": info[1], "source_channels": info[2]}
            try:
                if streams and info[0] / info[1] > long_file_seconds:
                    codes = tok.encode_file(src, num_codebooks=num_codebooks)
                    save_codes(dst, codes, source=str(src), extra=extra)
                    report.written.append(dst)
                else:
                    w = load_audio(src, sample_rate=tok.sample_rate, mono=tok.channels == 1)[0]
                    wavs.append(fit_channels(src, w, tok.channels))
                    ok.append((src, dst, extra))
            except (AudioError, CodesError) as e:
                report.failed.append((src, str(e)))
            bar.update(1)
        if ok:
            _encode_batch(tok, wavs, ok, num_codebooks, report)
    bar.close()
    return report


def _encode_batch(tok, wavs: list[torch.Tensor], items: list, num_codebooks, report: FilesReport) -> None:
    """Encode ``[C, S_i]`` waveforms as one zero-padded batch and save each item's codes."""
    lengths = torch.tensor([w.shape[-1] for w in wavs])
    batch = torch.zeros(len(wavs), wavs[0].shape[0], int(lengths.max()))
    for i, w in enumerate(wavs):
        batch[i, :, : w.shape[-1]] = w
    codes = tok.encode(batch, sample_rate=tok.sample_rate, lengths=lengths, num_codebooks=num_codebooks)
    for (src, dst, extra), item in zip(items, codes.unbatch()):
        try:
            save_codes(dst, item.to("cpu"), source=str(src), extra=extra)
            report.written.append(dst)
        except CodesFileError as e:
            report.failed.append((src, str(e)))


def check_audio_format(audio_format: str) -> str:
    import soundfile as sf

    fmt = audio_format.lstrip(".").lower()
    if fmt != "opus" and fmt.upper() not in sf.available_formats():
        raise FilesError(f"--format {audio_format!r}: not an audio format this build writes "
                         f"(e.g. wav, flac, ogg, opus, mp3)")
    return fmt


def source_format(meta: dict, path: Path) -> tuple[int, int, Optional[int]]:
    """(sample rate, channels, frames or None) of the audio the codes file ``path`` was made from;
    raises `CodesFileError` when it records none."""
    rate, channels = meta.get("source_sample_rate"), meta.get("source_channels")
    if rate is None or channels is None:
        raise CodesFileError(f"{path}: records no source sample rate and channels (made by an older speechtok or "
                             "not from a file): decode it without --match-source")
    return rate, channels, meta.get("source_frames")


def to_source_format(wav: torch.Tensor, sample_rate: int, meta: dict, path: Path) -> tuple[torch.Tensor, int]:
    """``[C, S]`` decoded audio -> ``[C', S']`` at the source's rate and channel count recorded in the
    codes file ``path`` (``meta``), trimmed to its length. Mono output is repeated to every channel;
    raises `CodesFileError` when the file records no source format."""
    rate, channels, frames = source_format(meta, path)
    wav = resample(wav, sample_rate, rate)
    if frames is not None:
        wav = wav[:, :frames]
    if wav.shape[0] != channels:
        if wav.shape[0] != 1 and channels != 1:
            raise CodesFileError(f"{path}: decoded audio has {wav.shape[0]} channels, the source {channels}")
        wav = wav.expand(channels, -1) if wav.shape[0] == 1 else wav.mean(dim=0, keepdim=True)
    return wav.contiguous(), int(rate)


def stale_audio_reason(dst: Path, rate: int, channels: Optional[int]) -> Optional[str]:
    """Why the existing audio file ``dst`` is not a finished decode at ``rate`` Hz (and ``channels``)."""
    try:
        _, r, c = audio_info(dst)
    except AudioError as e:
        return _problem(e, dst)
    if r != rate:
        return f"is at {r} Hz, this run writes {rate} Hz"
    if channels is not None and c != channels:
        return f"has {c} channels, this run writes {channels}"
    return None


def decode_files(inputs: Sequence[PathLike], output: PathLike, tokenizer=None, force: bool = False,
                 audio_format: str = "wav", progress: bool = True, match_source: bool = False) -> FilesReport:
    """Decode ``.stok`` files/directories to audio files under ``output``.

    ``tokenizer`` None loads the built-in model named in each file's ``model_id``; codes made by
    another model than the tokenizer given fail (reported per file). ``match_source``: write each
    file at the sample rate and channel count of the audio it was encoded from (recorded at
    encode time; default: the model's rate and channels).
    """
    from .registry import load

    fmt = check_audio_format(audio_format)
    report = FilesReport()
    pairs = plan_outputs(inputs, output, lambda p: p.suffix == EXTENSION, "." + fmt)
    cache: dict[str, object] = {}
    if tokenizer is not None and isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load(tokenizer)
    for src, dst in _progress(pairs, len(pairs), "decode", progress):
        try:
            meta = read_codes_metadata(src)
            rate, ch = source_format(meta, src)[:2] if match_source else (meta["sample_rate"], None)
            if dst.exists() and not force:
                reason = stale_audio_reason(dst, rate, ch)
                if reason is None:
                    report.skipped.append(dst)
                    continue
                report.redone.append((dst, reason))
            _decode_one(src, dst, meta, tokenizer, cache, match_source)
            report.written.append(dst)
        except (CodesError, AudioError, ValueError, RuntimeError) as e:  # RuntimeError: ModelLoadError
            report.failed.append((src, str(e)))
    return report


def _decode_one(src: Path, dst: Path, meta: dict, tokenizer, cache: dict, match: bool) -> None:
    from .registry import BUILTINS, load

    tok = tokenizer
    if tok is None:
        name = meta["model_id"].split("@")[0]
        if name not in BUILTINS:
            raise CodesFileError(f"{src}: made by {name!r}, not a built-in model: pass the model (--model)")
        tok = cache.setdefault(name, load(name))
    codes = load_codes(src, expect_model_id=tok.model_id)
    wav = tok.decode(codes)
    n = int(wav.lengths[0]) if codes.audio_lengths is None else min(int(codes.audio_lengths[0]),
                                                                        int(wav.lengths[0]))
    audio, rate = wav.audio[0, :, :n], wav.sample_rate
    if match:
        audio, rate = to_source_format(audio, rate, meta, src)
    save_audio(dst, audio, rate)


def codes_info(path: PathLike) -> dict:
    """Metadata of a codes file plus duration (s), frames, nominal and entropy bitrate (bit/s)."""
    codes, meta = read_codes(path)
    secs = float(codes.seconds().sum())
    return {**meta, "path": str(path), "batch": codes.batch_size, "num_codebooks": codes.num_codebooks,
            "frames": codes.lengths.tolist(), "seconds": round(secs, 4), "bitrate": round(codes.bitrate(), 2),
            "entropy_bitrate": round(codes.entropy_bitrate(), 2)}
