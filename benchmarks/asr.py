"""ASR back-ends for intelligibility (WER/CER of resynthesis), imported lazily.

- `WhisperASR`: faster-whisper (CTranslate2) from a local model directory; offline. For the
  shared Whisper weights: ``python shared/scripts/whisper_models.py base`` prints the directory.
- `PocketsphinxASR`: pocketsphinx with its bundled US-English model (weaker; a fallback).

Each takes mono float audio ``[S]`` at 16 kHz (`ASR.sample_rate`) and returns text.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Protocol

import torch

WHISPER_SCRIPT = Path(__file__).resolve().parents[1].parent / "shared" / "scripts" / "whisper_models.py"


class ASR(Protocol):
    name: str
    sample_rate: int

    def transcribe(self, audio: torch.Tensor) -> str: ...


class WhisperASR:
    """faster-whisper transcription (English, greedy, no timestamps) from ``model_path``."""

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


def whisper_model_dir(name: str = "base") -> str:
    """Directory of a local Whisper model: ``$SPEECHTOK_WHISPER_<NAME>``, else the shared
    ``whisper_models.py`` script's answer."""
    env = os.environ.get(f"SPEECHTOK_WHISPER_{name.replace('.', '_').upper()}")
    if env:
        return env
    if not WHISPER_SCRIPT.is_file():
        raise FileNotFoundError(f"no Whisper model directory for {name!r}: pass a path, or set "
                                f"SPEECHTOK_WHISPER_{name.replace('.', '_').upper()} ({WHISPER_SCRIPT} not found)")
    out = subprocess.run([sys.executable, str(WHISPER_SCRIPT), name], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def build_asr(spec: Optional[str], device: str = "cpu") -> Optional[ASR]:
    """``None``/"none" -> no ASR; "pocketsphinx"; "whisper:NAME" (tiny.en, base) or a model directory."""
    if spec is None or spec == "none":
        return None
    if spec == "pocketsphinx":
        return PocketsphinxASR()
    if spec.startswith("whisper:"):
        return WhisperASR(whisper_model_dir(spec.split(":", 1)[1]), device=device)
    if Path(spec).is_dir():
        return WhisperASR(spec, device=device)
    raise ValueError(f"unknown ASR {spec!r}: use none, pocketsphinx, whisper:base, whisper:tiny.en or a "
                     "CTranslate2 Whisper model directory")
