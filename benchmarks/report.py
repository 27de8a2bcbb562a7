"""Write a `BenchReport`: ``results.json``, ``results.md`` (a Markdown table) and PNG plots
(bitrate vs WER, bitrate vs mel distance; one line per tokenizer over its bitrates)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Union

from speechtok.atomic import atomic_path, atomic_write_text

from .runner import BenchReport

REPORT_FORMAT = "speechtok.bench"
REPORT_VERSION = 1

COLUMNS = [  # (field, header, format)
    ("tokenizer", "tokenizer", "{}"), ("num_codebooks", "k", "{}"), ("bitrate", "kbps", "{:.3g}"),
    ("entropy_bitrate", "entropy kbps", "{:.3g}"), ("token_rate", "tokens/s", "{:.4g}"),
    ("codebook_used", "used", "{:.2f}"), ("mel_distance", "mel ↓", "{:.3f}"),
    ("stft_distance", "STFT ↓", "{:.3f}"), ("si_sdr", "SI-SDR dB ↑", "{:.2f}"), ("stoi", "STOI ↑", "{:.3f}"),
    ("pesq", "PESQ ↑", "{:.2f}"), ("wer", "WER ↓", "{:.1%}"), ("cer", "CER ↓", "{:.1%}"),
    ("encode_rtf", "enc RTF", "{:.3g}"), ("decode_rtf", "dec RTF", "{:.3g}"), ("peak_memory_mb", "peak MB", "{:.0f}"),
]
_KBPS = {"bitrate", "entropy_bitrate"}


def _clean(v):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def to_dict(report: BenchReport) -> dict:
    d = asdict(report)
    return _clean({"format": REPORT_FORMAT, "format_version": REPORT_VERSION, **d})


def _cell(row, name: str, fmt: str) -> str:
    v = getattr(row, name)
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if name in _KBPS:
        v = v / 1000
    return fmt.format(v)


def to_markdown(report: BenchReport) -> str:
    lines = ["# speechtok benchmark", ""]
    if report.command:
        lines += ["Made by:", "", "```", report.command, "```", ""]
    cfg = report.config
    lines += [f"Data: `{report.data}` — {report.rows[0].items if report.rows else 0} utterances, "
              f"{report.rows[0].audio_seconds / 60 if report.rows else 0:.1f} min (round-robin over sources, "
              f"≤ {cfg.max_seconds:g} s each). Metrics at {cfg.eval_rate} Hz. Device: {report.device}.", ""]
    if report.asr:
        lines += [f"ASR: {report.asr}. Original audio: WER {report.original_wer:.1%}, CER {report.original_cer:.1%} "
                  "over the same utterances and references as the resyntheses: the manifest text, or for "
                  "utterances without text the ASR transcript of the original (which thus adds words "
                  "but no errors to the original's WER).", ""]
    lines += ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in report.rows:
        lines.append("| " + " | ".join(_cell(r, n, f) for n, _, f in COLUMNS) + " |")
    sources = sorted(report.original_wer_by_source)
    if len(sources) > 1:
        lines += ["", "WER by source:", "", "| tokenizer | k | " + " | ".join(sources) + " |",
                  "|" + "---|" * (2 + len(sources)),
                  "| original audio | – | " + " | ".join(f"{report.original_wer_by_source[s]:.1%}" for s in sources)
                  + " |"]
        for r in report.rows:
            if r.wer_by_source:
                lines.append(f"| {r.tokenizer} | {r.num_codebooks} | "
                             + " | ".join(f"{r.wer_by_source.get(s, math.nan):.1%}" for s in sources) + " |")
    lines += ["", "RTF: compute seconds per second of audio (lower is faster; < 1 is faster than real time). "
              "Peak MB: CUDA peak allocated on GPU, process peak RSS on CPU. "
              "used: fraction of codebook entries used (mean over codebooks).", ""]
    return "\n".join(lines)


def plot(report: BenchReport, y: str, ylabel: str, path: Union[str, Path]) -> bool:
    """Bitrate (kbps, log scale) vs ``y`` for each tokenizer; returns False when nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'speechtok[bench]'") from e
    series: dict[str, list[tuple[float, float, int]]] = {}
    for r in report.rows:
        v = getattr(r, y)
        if not math.isnan(v):
            series.setdefault(r.tokenizer, []).append((r.bitrate / 1000, v, r.num_codebooks))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for bx, by, k in pts:
            ax.annotate(f"k={k}", (bx, by), textcoords="offset points", xytext=(3, 3), fontsize=7)
    if y == "wer" and not math.isnan(report.original_wer):
        ax.axhline(report.original_wer, color="gray", ls="--", lw=1, label="original audio")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    if y in ("wer", "cer"):
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("nominal bitrate (kbps)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def write_report(report: BenchReport, out_dir: Union[str, Path], plots: bool = True) -> list[Path]:
    """Write results.json, results.md and (with matplotlib) the PNG plots; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    atomic_write_text(out / "results.json", json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n")
    written.append(out / "results.json")
    md = to_markdown(report)
    if plots:
        for y, label, fname in (("wer", "WER of resynthesis", "bitrate_vs_wer.png"),
                                ("mel_distance", "mel distance", "bitrate_vs_mel.png")):
            if plot(report, y, label, out / fname):
                written.append(out / fname)
                md += f"\n![{label}]({fname})\n"
    atomic_write_text(out / "results.md", md)
    written.append(out / "results.md")
    return written
