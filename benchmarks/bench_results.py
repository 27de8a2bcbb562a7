"""``results.json`` of `speechtok bench`: format ``speechtok.bench`` version 2, and its reader.

Version 2 (NaN and infinities written as null)::

    {"format": "speechtok.bench", "format_version": 2, "command", "data", "asr", "device",
     "config": {BenchConfig fields}, "environment": {python, torch, machine, cpu_threads, gpu},
     "original": {"wer", "cer", <reference-free metric>..., "ci": {metric: [lo, hi]},
                  "by_source": {source: wer}, "items", "audio_seconds",
                  "utterances": [{id, source, speaker, seconds, text, asr, wer, cer, <metric>...}]},
     "rows": [{tokenizer, model_id, num_codebooks, frame_rate, bitrate, entropy_bitrate, token_rate,
               codebook_used, codebook_perplexity, mel_distance, stft_distance, si_sdr, stoi, pesq,
               wer, cer, <quality metric>..., encode_rtf, decode_rtf, peak_memory_mb, items,
               audio_seconds, "ci": {metric: [lo, hi]}, "wer_by_source": {source: wer}}],
     "utterances": [{tokenizer, num_codebooks, id, source, speaker, seconds, text, asr_original,
                     asr_resynth, wer, cer, <metric>...}],
     "examples": [{tokenizer, num_codebooks, id, text, "original": "audio/original/ID.wav",
                   "resynth": "audio/TOKENIZER/kK/ID.wav"}],
     "notes": [str]}

Row means are over utterances (WER/CER: corpus-level, total edits / total reference words);
``ci`` are 95 % percentile-bootstrap intervals over utterances (`bench_stats`); bitrates are
bit/s, ``seconds`` s, metrics at 16 kHz. `load_results` also reads version 1 files (rows and the
original WER only) as version 2.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Union

FORMAT = "speechtok.bench"
VERSION = 2


def clean(v: Any) -> Any:
    """JSON has no NaN/inf: null; tuples become lists."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    return v


def row_dict(row: Any) -> dict:
    """A `BenchRow` as a results.json row: its fields, the quality means (``extra``) flattened in."""
    d = {f.name: getattr(row, f.name) for f in fields(row) if f.name not in ("extra", "ci", "wer_by_source")}
    d.update(row.extra)
    d["ci"] = {k: list(v) for k, v in row.ci.items()}
    d["wer_by_source"] = dict(row.wer_by_source)
    return d


def report_dict(report: Any) -> dict:
    """A `BenchReport` as the version 2 results.json object."""
    original = dict(report.original) or {"wer": report.original_wer, "cer": report.original_cer,
                                         "by_source": dict(report.original_wer_by_source)}
    return clean({"format": FORMAT, "format_version": VERSION, "command": report.command, "data": report.data,
                  "asr": report.asr, "device": report.device, "config": asdict(report.config),
                  "environment": report.environment, "original": original,
                  "rows": [row_dict(r) for r in report.rows], "utterances": list(report.utterances),
                  "examples": list(report.examples), "notes": list(report.notes)})


def load_results(path: Union[str, Path]) -> dict:
    """A results.json as a version 2 object (version 1 upgraded: no utterances, CIs or examples)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable results.json ({e})") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} results file")
    version = d.get("format_version")
    if version == VERSION:
        return d
    if version != 1:
        raise ValueError(f"{path}: {FORMAT} format_version {version!r} is not 1 or {VERSION}")
    rows = [{**r, "ci": {}} for r in d.get("rows", [])]
    original = {"wer": d.get("original_wer"), "cer": d.get("original_cer"),
                "by_source": d.get("original_wer_by_source", {}), "ci": {}, "utterances": []}
    return {"format": FORMAT, "format_version": VERSION, "command": d.get("command", ""), "data": d.get("data"),
            "asr": d.get("asr"), "device": d.get("device"), "config": d.get("config", {}),
            "environment": d.get("environment", {}), "original": original, "rows": rows, "utterances": [],
            "examples": [], "notes": [f"read from format_version 1 ({path.name}): no per-utterance results"]}
