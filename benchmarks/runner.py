"""The benchmark runner: tokenizers x bitrates x utterances -> one `BenchRow` per (tokenizer, k).

For every tokenizer and every bitrate it offers (a codec: each number of codebooks ``k`` through
`Codes.take_codebooks`), on utterances of a manifest:

- rates: token rate, nominal and entropy bitrate, codebook usage and perplexity;
- reconstruction (tokenizers with a decoder): mel distance, multi-scale STFT distance, SI-SDR,
  STOI, wideband PESQ, all at ``eval_rate`` (16 kHz) against the original;
- intelligibility: WER/CER of the resynthesis by an ASR, next to the original audio's WER/CER
  (reference: the manifest text, else the ASR transcript of the original);
- speed: encode/decode real-time factor (compute seconds per audio second) and peak memory.
"""
from __future__ import annotations

import json
import math
import platform
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from . import metrics as M


@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Attributes:
        max_items: utterances, taken round-robin over the manifest's ``source`` s and, within
            a source, over its ``speaker`` s.
        max_seconds: skip utterances longer than this.
        codebooks: numbers of codebooks to evaluate (None: 1, 2, 4, ... and K).
        asr: "whisper:base", "whisper:tiny.en", a model directory, "pocketsphinx" or None.
        device: torch device of the tokenizers (and the ASR).
        eval_rate: sample rate of the reconstruction metrics and ASR (Hz).
        intrusive: compute STOI and PESQ (slowest of the signal metrics).
    """

    max_items: int = 40
    max_seconds: float = 20.0
    codebooks: Optional[tuple[int, ...]] = None
    asr: Optional[str] = "whisper:base"
    device: str = "cpu"
    eval_rate: int = 16000
    intrusive: bool = True


@dataclass(frozen=True)
class Utterance:
    id: str
    path: str
    text: Optional[str]
    source: str
    audio: torch.Tensor  # mono float32 [S] at eval_rate


@dataclass(frozen=True)
class BenchRow:
    """Results of one tokenizer at one bitrate (means over utterances; WER/CER corpus-level).

    Reconstruction and ASR fields are NaN for tokenizers without a decoder.
    """

    tokenizer: str
    model_id: str
    num_codebooks: int
    frame_rate: float
    token_rate: float
    bitrate: float
    entropy_bitrate: float
    codebook_used: float
    codebook_perplexity: float
    mel_distance: float
    stft_distance: float
    si_sdr: float
    stoi: float
    pesq: float
    wer: float
    cer: float
    encode_rtf: float
    decode_rtf: float
    peak_memory_mb: float
    items: int
    audio_seconds: float
    wer_by_source: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BenchReport:
    """Everything a benchmark run produced (see `speechtok.benchmarks.report` for the outputs)."""

    rows: list[BenchRow]
    original_wer: float
    original_cer: float
    asr: Optional[str]
    data: str
    config: BenchConfig
    device: str
    command: str = ""
    environment: dict = field(default_factory=dict)
    original_wer_by_source: dict = field(default_factory=dict)


def select_utterances(manifest: str, config: BenchConfig) -> list[Utterance]:
    """Up to ``max_items`` utterances of ``manifest``, round-robin over sources, in a fixed order."""
    from speechtok.audio import load_audio

    path = Path(manifest).resolve()
    by_source: dict[str, list[dict]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get("duration") is None or rec["duration"] <= config.max_seconds:
                    by_source[str(rec.get("source", ""))].append(rec)
    queues = [_round_robin(by_source[s], "speaker") for s in sorted(by_source)]
    picked: list[dict] = []
    i = 0
    while len(picked) < config.max_items and any(i < len(q) for q in queues):
        picked.extend(q[i] for q in queues if i < len(q))
        i += 1
    out = []
    for rec in picked[: config.max_items]:
        audio_path = str((path.parent / rec["audio"]).resolve())
        wav, _ = load_audio(audio_path, sample_rate=config.eval_rate, mono=True)
        out.append(Utterance(str(rec["id"]), audio_path, rec.get("text"), str(rec.get("source", "")), wav[0]))
    return out


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


def codebook_levels(num_codebooks: int, wanted: Optional[Sequence[int]] = None) -> list[int]:
    """Numbers of codebooks to evaluate: ``wanted`` (clipped to K) or 1, 2, 4, ... plus K."""
    if wanted:
        return sorted({k for k in wanted if 1 <= k <= num_codebooks})
    ks = {num_codebooks}
    k = 1
    while k < num_codebooks:
        ks.add(k)
        k *= 2
    return sorted(ks)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _peak_memory_mb(device: str) -> float:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: process-wide peak


def _resample(x: torch.Tensor, sr: int, target: int) -> torch.Tensor:
    if sr == target:
        return x
    import torchaudio.functional as AF

    return AF.resample(x, sr, target)


def _nan_if_fail(fn, *args) -> float:
    try:
        v = fn(*args)
        return v if math.isfinite(v) else float("nan")
    except Exception:  # e.g. PESQ raises on utterances without detectable speech
        return float("nan")


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


class _Transcripts:
    """ASR transcripts of the originals (computed once per utterance for all tokenizers)."""

    def __init__(self, asr: Any, utts: Sequence[Utterance]):
        self.asr, self.hyp = asr, {}
        if asr is not None:
            for u in utts:
                self.hyp[u.id] = asr.transcribe(u.audio)

    def reference(self, u: Utterance) -> str:
        return u.text if u.text is not None else self.hyp.get(u.id, "")


def bench_tokenizer(tok: Any, name: str, utts: Sequence[Utterance], config: BenchConfig,
                    transcripts: _Transcripts) -> list[BenchRow]:
    """All rows of one tokenizer (see the module docstring)."""
    device = config.device
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    mono = int(getattr(tok, "channels", 1)) == 1
    encoded, enc_time, total_secs = [], 0.0, 0.0
    for u in utts:
        wav = _resample(u.audio[None], config.eval_rate, int(tok.sample_rate)).to(device)
        if not mono:
            wav = wav.expand(int(tok.channels), -1)
        _sync(device)
        t = time.perf_counter()
        codes = tok.encode(wav, sample_rate=int(tok.sample_rate))
        _sync(device)
        enc_time += time.perf_counter() - t
        encoded.append(codes)
        total_secs += u.audio.numel() / config.eval_rate
    K = encoded[0].num_codebooks
    can_decode = bool(getattr(tok, "can_decode", hasattr(tok, "decode")))
    rows = []
    for k in codebook_levels(K, config.codebooks):
        sizes = encoded[0].codebook_sizes[:k]
        cat = torch.cat([c.take_codebooks(k).codes[0, :, : int(c.lengths[0])].cpu() for c in encoded], dim=1)
        usage = M.codebook_usage(cat, sizes)
        grid_secs = sum(float(c.grid_frames().sum()) for c in encoded) / encoded[0].frame_rate
        tokens = sum(int(c.lengths.sum()) for c in encoded) * k
        bits = sum(math.log2(s) for s in sizes)
        nominal = sum(int(c.lengths.sum()) for c in encoded) * bits / grid_secs if grid_secs else 0.0
        per: dict[str, list[float]] = defaultdict(list)
        wer_e, cer_e, dec_time = [], [], 0.0
        by_source: dict[str, list] = defaultdict(list)
        if can_decode:
            for u, c in zip(utts, encoded):
                _sync(device)
                t = time.perf_counter()
                out = tok.decode(c.take_codebooks(k))
                _sync(device)
                dec_time += time.perf_counter() - t
                y = out.audio[0, :, : int(out.lengths[0])].float().mean(0).cpu()
                y = _resample(y, int(out.sample_rate), config.eval_rate)
                x = u.audio
                per["mel"].append(_nan_if_fail(M.mel_distance, x, y, config.eval_rate))
                per["stft"].append(_nan_if_fail(M.stft_distance, x, y))
                per["sisdr"].append(_nan_if_fail(M.si_sdr, x, y))
                if config.intrusive:
                    per["stoi"].append(_nan_if_fail(M.stoi, x, y, config.eval_rate))
                    per["pesq"].append(_nan_if_fail(M.pesq_wb, x, y, config.eval_rate))
                if transcripts.asr is not None:
                    hyp = transcripts.asr.transcribe(y)
                    ref = transcripts.reference(u)
                    wer_e.append(M.word_errors(ref, hyp))
                    cer_e.append(M.char_errors(ref, hyp))
                    by_source[u.source].append(wer_e[-1])
        nan = float("nan")
        rows.append(BenchRow(
            tokenizer=name, model_id=tok.model_id, num_codebooks=k, frame_rate=float(encoded[0].frame_rate),
            token_rate=tokens / grid_secs if grid_secs else 0.0, bitrate=nominal,
            entropy_bitrate=sum(usage.entropy_bits) * cat.shape[1] / grid_secs if grid_secs else 0.0,
            codebook_used=_mean(usage.used), codebook_perplexity=_mean(usage.perplexity),
            mel_distance=_mean(per["mel"]), stft_distance=_mean(per["stft"]), si_sdr=_mean(per["sisdr"]),
            stoi=_mean(per["stoi"]), pesq=_mean(per["pesq"]),
            wer=M.corpus_rate(wer_e) if wer_e else nan, cer=M.corpus_rate(cer_e) if cer_e else nan,
            encode_rtf=enc_time / total_secs, decode_rtf=dec_time / total_secs if can_decode else nan,
            peak_memory_mb=_peak_memory_mb(device), items=len(utts), audio_seconds=total_secs,
            wer_by_source={src: M.corpus_rate(e) for src, e in sorted(by_source.items())}))
    return rows


def run_benchmark(tokenizers: Sequence[Any], data: str, config: BenchConfig = BenchConfig(),
                  command: str = "", asr: Any = None) -> BenchReport:
    """Benchmark ``tokenizers`` (names/directories for `speechtok.load`, or tokenizer objects) on
    the manifest ``data``; returns a `BenchReport` (write it with `speechtok.benchmarks.report`).

    ``asr`` (an object with ``transcribe(audio [S] at 16 kHz) -> str`` and ``name``) overrides
    ``config.asr``."""
    import speechtok

    from .asr import build_asr

    utts = select_utterances(data, config)
    if not utts:
        raise ValueError(f"{data}: no utterances selected (max_seconds={config.max_seconds})")
    asr = asr if asr is not None else build_asr(config.asr, config.device)
    transcripts = _Transcripts(asr, utts)
    # the original is scored on the same items and references as the resyntheses (items without
    # text are scored against the original's own transcript, so they add length but no errors)
    wer_e = [M.word_errors(transcripts.reference(u), transcripts.hyp[u.id]) for u in utts] if asr else []
    cer_e = [M.char_errors(transcripts.reference(u), transcripts.hyp[u.id]) for u in utts] if asr else []
    orig_by_source: dict[str, list] = defaultdict(list)
    for u, e in zip(utts, wer_e):
        orig_by_source[u.source].append(e)
    rows = []
    for spec in tokenizers:
        tok = speechtok.load(spec, device=config.device) if isinstance(spec, (str, Path)) else spec
        if isinstance(spec, (str, Path)) and not Path(spec).exists():
            name = str(spec)  # a built-in name
        else:  # a directory or an object: the model's own name (a folder may be called just "model")
            name = getattr(tok, "name", None) or (Path(spec).name if isinstance(spec, (str, Path)) else tok.model_id)
        rows.extend(bench_tokenizer(tok, name, utts, config, transcripts))
    env = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
           "cpu_threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name() if str(config.device).startswith("cuda") else None}
    return BenchReport(rows=rows, original_wer=M.corpus_rate(wer_e) if wer_e else float("nan"),
                       original_cer=M.corpus_rate(cer_e) if cer_e else float("nan"),
                       asr=getattr(asr, "name", None), data=str(data), config=config, device=config.device,
                       command=command, environment=env,
                       original_wer_by_source={s: M.corpus_rate(e) for s, e in sorted(orig_by_source.items())})
