"""Benchmark data: named suites, the packaged set, manifests, the LibriSpeech protocol preset.

``speechtok bench [TOKENIZER...] [--data DATA]`` resolves ``DATA`` with `resolve_data`:

- ``bench-mini`` (the default): the set that ships inside the package
  (``speechtok/benchmarks/data/bench-mini/``: 21 utterances of held-out real speakers, see its
  README.md), so a fresh install needs no other file;
- ``real``, ``tts``: manifests of the shared data folder (``$SPEECHTOK_SHARED``, else ``../shared``
  beside the repository);
- ``librispeech-test-clean:/path/to/LibriSpeech/test-clean``: the protocol preset (a LibriSpeech
  folder: ``SPK/CHAPTER/SPK-CHAPTER-UTT.flac`` + ``SPK-CHAPTER.trans.txt``; every utterance, no
  length cut; give the ASR as ``--asr hubert-ctc:DIR``);
- anything else: a manifest path (JSONL, one ``{id, audio, text, source, speaker, duration}`` a line,
  ``audio`` relative to the manifest).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

PACKAGED_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Suite:
    """A benchmark data set and the protocol that suits it.

    Attributes:
        name: what ``--data`` says.
        manifest: the manifest, relative to the shared folder (``where="shared"``) or to
            `PACKAGED_DIR` (``where="package"``); empty for a folder preset.
        description: one line for reports.
        where: "shared", "package" or "librispeech" (a LibriSpeech folder given after ``NAME:``).
        settings: `BenchConfig` fields the protocol fixes (applied unless given explicitly).
    """

    name: str
    manifest: str
    description: str
    where: str = "shared"
    settings: dict = field(default_factory=dict)


SUITES: dict[str, Suite] = {
    "bench-mini": Suite("bench-mini", "bench-mini/manifest.jsonl",
                        "packaged: 21 utterances of 21 held-out real speakers (16 speechocean762 Mandarin-L1 "
                        "children and adults, 5 LibriSpeech readers), 2.7-5.8 s, 16 kHz", where="package"),
    "real": Suite("real", "data/real/manifest.jsonl",
                  "LJSpeech, LibriSpeech, FSDD digits, Asterisk prompts: 8-22 kHz real speech, round-robin"),
    "tts": Suite("tts", "data/tts/manifest.jsonl", "Harvard sentences by 9 synthetic voices (16 kHz)"),
    "librispeech-test-clean": Suite(
        "librispeech-test-clean", "",
        "LibriSpeech test-clean (all 2,620 utterances, 40 speakers), WER by HuBERT-large CTC "
        "(--asr hubert-ctc:DIR, facebook/hubert-large-ls960-ft)",
        where="librispeech", settings={"max_items": None, "max_seconds": None}),
}
DEFAULT_DATA = "bench-mini"


@dataclass(frozen=True)
class Utterance:
    """One benchmark utterance: ``audio`` is mono float32 ``[S]`` at the run's ``eval_rate`` (Hz)."""

    id: str
    path: str
    text: Optional[str]
    source: str
    audio: torch.Tensor
    speaker: str = ""
    seconds: float = 0.0
    phones: Optional[str] = None  # phone alignment TSV (start_s, end_s, phone), where the data has one


def shared_dir() -> Path:
    env = os.environ.get("SPEECHTOK_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def resolve_data(data: Optional[str] = None) -> tuple[str, Optional[Suite]]:
    """``data`` (default `DEFAULT_DATA`) as ``(manifest path or LibriSpeech folder, suite or None)``."""
    data = data or DEFAULT_DATA
    name, _, arg = data.partition(":")
    if name in SUITES and SUITES[name].where == "librispeech":
        root = Path(arg)
        if not arg or not root.is_dir():
            raise FileNotFoundError(f"{data}: give the LibriSpeech folder as {name}:/path/to/LibriSpeech/test-clean")
        if not any(root.glob("*/*/*.trans.txt")):
            raise FileNotFoundError(f"{root}: no SPEAKER/CHAPTER/*.trans.txt below it (not a LibriSpeech folder)")
        return str(root), SUITES[name]
    if data in SUITES and not Path(data).exists():
        suite = SUITES[data]
        base = PACKAGED_DIR if suite.where == "package" else shared_dir()
        path = base / suite.manifest
        if not path.is_file():
            hint = "reinstall speechtok" if suite.where == "package" else "set SPEECHTOK_SHARED to the shared folder"
            raise FileNotFoundError(f"suite {data!r} needs {path} ({hint})")
        return str(path), suite
    if not Path(data).is_file():
        raise FileNotFoundError(f"{data}: no such manifest, and not a suite name ({', '.join(SUITES)})")
    return data, None


def read_manifest(path: str) -> list[dict]:
    """Records of a JSONL manifest, ``audio`` (and ``phones``) made absolute."""
    base = Path(path).resolve().parent
    recs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec["audio"] = str((base / rec["audio"]).resolve())
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a manifest line ({e})") from e
            if rec.get("phones"):
                rec["phones"] = str((base / rec["phones"]).resolve())
            recs.append(rec)
    return recs


def read_librispeech(root: str) -> list[dict]:
    """Manifest records of a LibriSpeech folder (``SPK/CHAPTER/SPK-CHAPTER.trans.txt`` lines
    ``UTT-ID TEXT`` beside ``UTT-ID.flac``), sorted by id; ``duration`` is read from the headers."""
    import soundfile as sf

    recs = []
    for trans in sorted(Path(root).glob("*/*/*.trans.txt")):
        for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = trans.parent / f"{uid}.flac"
            if not audio.is_file():
                raise FileNotFoundError(f"{trans}:{n}: {audio.name} is missing")
            info = sf.info(str(audio))
            recs.append({"id": uid, "audio": str(audio), "text": text, "speaker": uid.split("-")[0],
                         "source": "librispeech", "duration": info.frames / info.samplerate})
    return sorted(recs, key=lambda r: r["id"])


def read_records(data: str, suite: Optional[Suite] = None) -> list[dict]:
    """Records of resolved ``data`` (a manifest, or a LibriSpeech folder for that preset)."""
    if suite is not None and suite.where == "librispeech":
        return read_librispeech(data)
    return read_manifest(data)


def _round_robin(recs: list[dict], key: str) -> list[dict]:
    """Records reordered to alternate over ``rec[key]`` groups (first-seen group order)."""
    groups: dict[str, list[dict]] = {}
    for r in recs:
        groups.setdefault(str(r.get(key)), []).append(r)
    out, i = [], 0
    while len(out) < len(recs):
        out.extend(g[i] for g in groups.values() if i < len(g))
        i += 1
    return out


def pick_records(recs: list[dict], max_items: Optional[int], max_seconds: Optional[float]) -> list[dict]:
    """Up to ``max_items`` (None: all) records no longer than ``max_seconds`` (None: any), taken
    round-robin over ``source`` s and, within a source, over ``speaker`` s; a fixed order."""
    by_source: dict[str, list[dict]] = defaultdict(list)
    for rec in recs:
        if max_seconds is None or rec.get("duration") is None or rec["duration"] <= max_seconds:
            by_source[str(rec.get("source", ""))].append(rec)
    queues = [_round_robin(by_source[s], "speaker") for s in sorted(by_source)]
    picked: list[dict] = []
    i = 0
    while (max_items is None or len(picked) < max_items) and any(i < len(q) for q in queues):
        picked.extend(q[i] for q in queues if i < len(q))
        i += 1
    return picked if max_items is None else picked[:max_items]


def load_utterances(recs: list[dict], sample_rate: int) -> list[Utterance]:
    """`Utterance` s of ``recs`` (absolute ``audio`` paths), resampled to ``sample_rate`` mono."""
    from speechtok.audio import load_audio

    out = []
    for rec in recs:
        wav, _ = load_audio(rec["audio"], sample_rate=sample_rate, mono=True)
        out.append(Utterance(str(rec["id"]), rec["audio"], rec.get("text"), str(rec.get("source", "")), wav[0],
                             str(rec.get("speaker", "")), wav.shape[1] / sample_rate, rec.get("phones") or None))
    return out
