"""The benchmark runner: tokenizers x bitrates x utterances -> rows, per-utterance records, examples.

For every tokenizer and every bitrate it offers (a codec: each number of codebooks ``k`` through
`Codes.take_codebooks`), on utterances of the data (`speechtok.benchmarks.suite`):

- rates: token rate, nominal and entropy bitrate, codebook usage and perplexity;
- reconstruction (tokenizers with a decoder): mel distance, multi-scale STFT distance, SI-SDR,
  STOI, wideband PESQ, and the quality metrics of `speechtok.benchmarks.quality` that are installed
  (`bench_quality`), all at ``eval_rate`` (16 kHz) against the original;
- intelligibility: WER/CER of the resynthesis by an ASR, next to the original audio's WER/CER
  (reference: the manifest text, else the ASR transcript of the original);
- phone information (data with phone alignments, `bench_phones`): PNMI of the first codebook,
  phone ABX within and across speakers of the first ``k`` codebooks;
- speed: encode/decode real-time factor (compute seconds per audio second), throughput in hours
  of audio per CPU-core-hour (``RTF x threads``; on a GPU, per GPU-hour) and peak memory.

Each (tokenizer, k) gives a `BenchRow` of means (WER/CER corpus-level) with 95 % bootstrap
intervals (`bench_stats`), and one record per utterance (`BenchReport.utterances`): transcripts of
the original and of the resynthesis, per-utterance WER/CER and every metric. The first
``config.examples`` utterances per (tokenizer, k) are saved as 16 kHz WAV under ``OUT/audio/``.
"""
from __future__ import annotations

import math
import platform
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from . import bench_phones as PH
from . import bench_quality as Q
from . import bench_stats as S
from . import metrics as M
from .runner_util import codebook_levels, nan_if_fail, peak_memory_mb, resample, sync
from .suite import Utterance, _round_robin, load_utterances, pick_records, read_records  # noqa: F401 (codec_phones)

__all__ = ["BenchConfig", "BenchRow", "BenchReport", "Utterance", "codebook_levels", "run_benchmark",
           "select_utterances", "bench_tokenizer"]

MAX_PHONE_FRAME_RATE = 200.0  # Hz: frame-level PNMI/ABX for token streams up to this rate (not samples)
SIGNAL_METRICS = ("mel_distance", "stft_distance", "si_sdr", "stoi", "pesq")
DEFAULT_QUALITY = ("speaker_similarity", "dnsmos", "visqol", "f0")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Attributes:
        max_items: utterances (None: all), taken round-robin over the data's ``source`` s and,
            within a source, over its ``speaker`` s.
        max_seconds: skip utterances longer than this (None: keep all).
        codebooks: numbers of codebooks to evaluate (None: 1, 2, 4, ... and K).
        asr: "auto" (the best installed Whisper: base, else tiny.en, else none), "whisper:base",
            "whisper:tiny.en", "hubert-ctc:DIR", a CTranslate2 Whisper directory, "pocketsphinx" or None.
        device: torch device of the tokenizers (and the ASR).
        eval_rate: sample rate of the reconstruction metrics and ASR (Hz).
        intrusive: compute STOI and PESQ (slowest of the signal metrics).
        metrics: quality metrics of `speechtok.benchmarks.quality` to add (skipped with a note
            where unavailable).
        examples: utterances per (tokenizer, k) whose original and resynthesis are saved (FLAC).
        phones: compute PNMI and ABX where the data has phone alignments.
        abx_mode: "phone" (any-context phone ABX) or "triphone" (within-context), `bench_phones`.
    """

    max_items: Optional[int] = 40
    max_seconds: Optional[float] = 20.0
    codebooks: Optional[tuple[int, ...]] = None
    asr: Optional[str] = "auto"
    device: str = "cpu"
    eval_rate: int = 16000
    intrusive: bool = True
    metrics: tuple[str, ...] = DEFAULT_QUALITY
    examples: int = 3
    phones: bool = True
    abx_mode: str = "phone"


@dataclass(frozen=True)
class BenchRow:
    """Results of one tokenizer at one bitrate: means over utterances (WER/CER corpus-level).

    Reconstruction and ASR fields are NaN for tokenizers without a decoder. ``extra``: the
    quality metrics' and phone metrics' means (result key -> mean); ``ci``: metric -> 95 %
    bootstrap ``(lo, hi)``. Throughputs: hours of audio per core-hour on a CPU (compute time x
    torch threads), per GPU-hour on a GPU.
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
    extra: dict = field(default_factory=dict)
    ci: dict = field(default_factory=dict)
    encode_throughput: float = float("nan")
    decode_throughput: float = float("nan")


@dataclass(frozen=True)
class BenchReport:
    """Everything a benchmark run produced (`speechtok.benchmarks.report` writes it).

    ``original``: the original audio's scores (``wer``, ``cer``, reference-free quality metrics,
    ``ci``, ``by_source``, ``utterances``); ``utterances``: one record per (tokenizer, k,
    utterance); ``examples``: the saved WAV pairs (paths relative to the output folder).
    """

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
    original: dict = field(default_factory=dict)
    utterances: list = field(default_factory=list)
    examples: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def select_utterances(data: str, config: BenchConfig, suite: Any = None) -> list[Utterance]:
    """Up to ``max_items`` utterances of ``data`` (a manifest, or a LibriSpeech folder with its
    suite), round-robin over sources then speakers, in a fixed order, at ``eval_rate``."""
    picked = pick_records(read_records(data, suite), config.max_items, config.max_seconds)
    return load_utterances(picked, config.eval_rate)


class _Transcripts:
    """ASR transcripts of the originals (once per utterance for all tokenizers) and scoring
    (`metrics.word_errors`/`char_errors`: both texts through Whisper's English normaliser)."""

    def __init__(self, asr: Any, utts: Sequence[Utterance]):
        self.asr, self.hyp = asr, {}
        if asr is not None:
            for u in utts:
                self.hyp[u.id] = asr.transcribe(u.audio)

    def reference(self, u: Utterance) -> str:
        return u.text if u.text is not None else self.hyp.get(u.id, "")

    def errors(self, u: Utterance, hyp: str) -> tuple[M.ErrorRate, M.ErrorRate]:
        ref = self.reference(u)
        return M.word_errors(ref, hyp), M.char_errors(ref, hyp)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"


def _summary(recs: list[dict], keys: Sequence[str]) -> tuple[dict, dict]:
    """Means and 95 % CIs of ``keys`` over ``recs``; ``wer``/``cer`` as corpus rates of the edits."""
    means, ci = {}, {}
    for k in keys:
        vals = [r.get(k, float("nan")) for r in recs]
        means[k], ci[k] = S.mean(vals), S.mean_ci(vals)
    for k in ("wer", "cer"):
        pairs = [r[f"_{k}"] for r in recs if f"_{k}" in r]
        if pairs:
            means[k] = M.corpus_rate(pairs)
            ci[k] = S.ratio_ci([p.edits for p in pairs], [p.length for p in pairs])
        else:
            means[k], ci[k] = float("nan"), (float("nan"), float("nan"))
    return means, ci


def _base_record(u: Utterance) -> dict:
    return {"id": u.id, "source": u.source, "speaker": u.speaker, "seconds": u.seconds, "text": u.text}


def bench_tokenizer(tok: Any, name: str, utts: Sequence[Utterance], config: BenchConfig,
                    transcripts: _Transcripts, plan: Optional[Q.QualityPlan] = None,
                    out_dir: Optional[Path] = None, progress: Optional[Callable[[str], None]] = None,
                    notes: Optional[list] = None, alignments: Optional[dict] = None,
                    ) -> tuple[list[BenchRow], list[dict], list[dict]]:
    """Rows, per-utterance records and saved examples of one tokenizer (see the module docstring);
    ``progress`` gets a line per stage (encoding, each k scored), ``notes`` what was skipped;
    ``alignments``: `bench_phones.load_alignments` of ``utts`` (None: read here if ``config.phones``)."""
    from speechtok.audio import save_audio

    plan = plan or Q.QualityPlan()
    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    device = config.device
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    mono = int(getattr(tok, "channels", 1)) == 1
    encoded, enc_time, total_secs = [], 0.0, 0.0
    for u in utts:
        wav = resample(u.audio[None], config.eval_rate, int(tok.sample_rate)).to(device)
        if not mono:
            wav = wav.expand(int(tok.channels), -1)
        sync(device)
        t = time.perf_counter()
        codes = tok.encode(wav, sample_rate=int(tok.sample_rate))
        sync(device)
        enc_time += time.perf_counter() - t
        encoded.append(codes)
        total_secs += u.audio.numel() / config.eval_rate
    K = encoded[0].num_codebooks
    say(f"{name}: encoded {len(utts)} utterances ({total_secs:.0f} s of audio) in {enc_time:.1f} s")
    can_decode = bool(getattr(tok, "can_decode", hasattr(tok, "decode")))
    keys = [k for k in SIGNAL_METRICS if config.intrusive or k not in ("stoi", "pesq")] + plan.keys
    rows, records, examples = [], [], []
    align = (PH.load_alignments(utts) if alignments is None else alignments) if config.phones else {}
    if align and float(encoded[0].frame_rate) > MAX_PHONE_FRAME_RATE:
        msg = (f"{name}: phone metrics skipped ({float(encoded[0].frame_rate):g} Hz tokens; frame-level PNMI and "
               f"ABX are for token rates up to {MAX_PHONE_FRAME_RATE:g} Hz)")
        say(msg)
        if notes is not None:
            notes.append(msg)
        align = {}
    code_arrays = [c.codes[0, :, : int(c.lengths[0])].cpu().numpy() for c in encoded] if align else []
    ids = [u.id for u in utts]
    fr = float(encoded[0].frame_rate)
    pnmi = PH.pnmi_score(code_arrays, ids, align, fr) if align else None  # first codebook: the same for every k
    threads = 1 if str(device).startswith("cuda") else torch.get_num_threads()
    for k in codebook_levels(K, config.codebooks):
        sizes = encoded[0].codebook_sizes[:k]
        cat = torch.cat([c.take_codebooks(k).codes[0, :, : int(c.lengths[0])].cpu() for c in encoded], dim=1)
        usage = M.codebook_usage(cat, sizes)
        grid_secs = sum(float(c.grid_frames().sum()) for c in encoded) / encoded[0].frame_rate
        tokens = sum(int(c.lengths.sum()) for c in encoded) * k
        bits = sum(math.log2(s) for s in sizes)
        nominal = sum(int(c.lengths.sum()) for c in encoded) * bits / grid_secs if grid_secs else 0.0
        recs, dec_time = [], 0.0
        for i, (u, c) in enumerate(zip(utts, encoded)):
            rec = {"tokenizer": name, "num_codebooks": k, **_base_record(u),
                   "asr_original": transcripts.hyp.get(u.id), "asr_resynth": None}
            if can_decode:
                sync(device)
                t = time.perf_counter()
                out = tok.decode(c.take_codebooks(k))
                sync(device)
                dec_time += time.perf_counter() - t
                y = out.audio[0, :, : int(out.lengths[0])].float().mean(0).cpu()
                y = resample(y, int(out.sample_rate), config.eval_rate)
                x = u.audio
                rec["mel_distance"] = nan_if_fail(M.mel_distance, x, y, config.eval_rate)
                rec["stft_distance"] = nan_if_fail(M.stft_distance, x, y)
                rec["si_sdr"] = nan_if_fail(M.si_sdr, x, y)
                if config.intrusive:
                    rec["stoi"] = nan_if_fail(M.stoi, x, y, config.eval_rate)
                    rec["pesq"] = nan_if_fail(M.pesq_wb, x, y, config.eval_rate)
                for spec in plan.specs:
                    rec.update(Q.score(spec, x, y, config.eval_rate))
                if transcripts.asr is not None:
                    rec["asr_resynth"] = transcripts.asr.transcribe(y)
                    rec["_wer"], rec["_cer"] = transcripts.errors(u, rec["asr_resynth"])
                    rec["wer"], rec["cer"] = rec["_wer"].rate, rec["_cer"].rate
                if out_dir is not None and i < config.examples:
                    stem = f"audio/{_safe(name)}/k{k}/{_safe(u.id)}.flac"
                    orig = f"audio/original/{_safe(u.id)}.flac"
                    if not (out_dir / orig).exists():
                        save_audio(out_dir / orig, x, config.eval_rate, subtype="PCM_16")
                    save_audio(out_dir / stem, y.clamp(-1.0, 1.0), config.eval_rate, subtype="PCM_16")
                    examples.append({"tokenizer": name, "num_codebooks": k, "id": u.id, "text": u.text,
                                     "original": orig, "resynth": stem})
            recs.append(rec)
        means, ci = _summary(recs, keys)
        phone_keys = []
        if align:
            pm, pci, _ = PH.abx_scores(code_arrays, ids, align, fr, k, mode=config.abx_mode)
            pm["pnmi"], pci["pnmi"] = pnmi[0], pnmi[1]
            means.update(pm)
            ci.update(pci)
            phone_keys = list(PH.PHONE_KEYS)
        by_source: dict[str, list] = defaultdict(list)
        for r in recs:
            if "_wer" in r:
                by_source[r["source"]].append(r["_wer"])
        nan = float("nan")
        rows.append(BenchRow(
            tokenizer=name, model_id=tok.model_id, num_codebooks=k, frame_rate=float(encoded[0].frame_rate),
            token_rate=tokens / grid_secs if grid_secs else 0.0, bitrate=nominal,
            entropy_bitrate=sum(usage.entropy_bits) * cat.shape[1] / grid_secs if grid_secs else 0.0,
            codebook_used=S.mean(usage.used), codebook_perplexity=S.mean(usage.perplexity),
            **{m: means.get(m, nan) for m in SIGNAL_METRICS}, wer=means["wer"], cer=means["cer"],
            encode_rtf=enc_time / total_secs, decode_rtf=dec_time / total_secs if can_decode else nan,
            peak_memory_mb=peak_memory_mb(device), items=len(utts), audio_seconds=total_secs,
            wer_by_source={src: M.corpus_rate(e) for src, e in sorted(by_source.items())},
            extra={m: means[m] for m in [*plan.keys, *phone_keys]},
            ci={m: ci[m] for m in [*keys, *phone_keys, "wer", "cer"]},
            encode_throughput=total_secs / (enc_time * threads) if enc_time > 0 else nan,
            decode_throughput=total_secs / (dec_time * threads) if can_decode and dec_time > 0 else nan))
        records.extend({k2: v for k2, v in r.items() if not k2.startswith("_")} for r in recs)
        wer = f", WER {rows[-1].wer:.1%}" if math.isfinite(rows[-1].wer) else ""
        say(f"{name} k={k}: scored {len(recs)} utterances{wer} ({time.perf_counter() - t_start:.0f} s so far)")
    return rows, records, examples


def _original(utts: Sequence[Utterance], transcripts: _Transcripts, plan: Q.QualityPlan,
              config: BenchConfig) -> dict:
    """The original audio's scores: WER/CER (same references as the resyntheses), reference-free
    quality metrics, CIs, WER by source, and one record per utterance."""
    recs = []
    for u in utts:
        rec = {**_base_record(u), "asr": transcripts.hyp.get(u.id)}
        if transcripts.asr is not None:
            rec["_wer"], rec["_cer"] = transcripts.errors(u, transcripts.hyp[u.id])
            rec["wer"], rec["cer"] = rec["_wer"].rate, rec["_cer"].rate
        rec.update(Q.score_original(plan, u.audio, config.eval_rate))
        recs.append(rec)
    keys = [k for k in recs[0] if k not in ("wer", "cer", "asr", "_wer", "_cer") and k not in _base_record(utts[0])]
    means, ci = _summary(recs, keys)
    by_source: dict[str, list] = defaultdict(list)
    for r in recs:
        if "_wer" in r:
            by_source[r["source"]].append(r["_wer"])
    return {**means, "ci": ci, "by_source": {s: M.corpus_rate(e) for s, e in sorted(by_source.items())},
            "items": len(utts), "audio_seconds": sum(u.seconds for u in utts),
            "utterances": [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]}


def _load(spec: Any, device: str) -> tuple[str, Any]:
    """``(name, tokenizer)`` of a built-in name, a model directory or a tokenizer object."""
    import speechtok

    tok = speechtok.load(spec, device=device) if isinstance(spec, (str, Path)) else spec
    if isinstance(spec, (str, Path)) and not Path(spec).exists():
        return str(spec), tok  # a built-in name
    # a directory or an object: the model's own name (a folder may be called just "model")
    return getattr(tok, "name", None) or (Path(spec).name if isinstance(spec, (str, Path)) else tok.model_id), tok


def run_benchmark(tokenizers: Sequence[Any], data: str, config: BenchConfig = BenchConfig(),
                  command: str = "", asr: Any = None, suite: Any = None, out_dir: Optional[str] = None,
                  quality: Any = None, progress: Optional[Callable[[str], None]] = None) -> BenchReport:
    """Benchmark ``tokenizers`` (names/directories for `speechtok.load`, or tokenizer objects) on
    ``data`` (a manifest, or with ``suite`` a resolved `suite.resolve_data` target); returns a
    `BenchReport` (write it with `speechtok.benchmarks.report.write_report`).

    ``asr`` (an object with ``transcribe(audio [S] at 16 kHz) -> str`` and ``name``) overrides
    ``config.asr``; ``out_dir``: where the example WAVs go (None: no examples); ``quality``: a
    module with the `bench_quality` contract (default: `speechtok.benchmarks.quality`);
    ``progress``: called with one line per stage (the CLI prints them to stderr)."""
    from .asr import resolve_asr

    utts = select_utterances(data, config, suite)
    if not utts:
        raise ValueError(f"{data}: no utterances selected (max_seconds={config.max_seconds})")
    toks = [_load(spec, config.device) for spec in tokenizers]  # a bad name fails before any scoring
    notes: list[str] = []
    if asr is None:
        asr, note = resolve_asr(config.asr, config.device)
        notes += [note] if note else []
    say = progress or (lambda msg: None)
    if asr is not None:
        say(f"ASR {getattr(asr, 'name', 'asr')}: transcribing {len(utts)} original utterances")
    transcripts = _Transcripts(asr, utts)
    plan = Q.plan_quality(config.metrics, quality)
    notes += plan.notes
    if out_dir is None and config.examples:
        notes.append("examples not saved (no output folder)")
    original = _original(utts, transcripts, plan, config)
    alignments = PH.load_alignments(utts) if config.phones else {}  # read once for all tokenizers
    rows, records, examples = [], [], []
    for name, tok in toks:
        r, u, e = bench_tokenizer(tok, name, utts, config, transcripts, plan,
                                  Path(out_dir) if out_dir is not None else None, progress=progress, notes=notes,
                                  alignments=alignments)
        rows += r
        records += u
        examples += e
    env = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
           "cpu_threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name() if str(config.device).startswith("cuda") else None}
    return BenchReport(rows=rows, original_wer=original["wer"], original_cer=original["cer"],
                       asr=getattr(asr, "name", None), data=str(data), config=config, device=config.device,
                       command=command, environment=env, original_wer_by_source=original["by_source"],
                       original=original, utterances=records, examples=examples, notes=notes)
