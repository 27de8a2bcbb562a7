"""Write a benchmark report: ``results.json``, ``results.md`` (a Markdown table), one Pareto plot
per metric (``bitrate_vs_<metric>.png``: bitrate vs the metric, one line per tokenizer over its
bitrates) and ``report.html`` (`speechtok.benchmarks.html_report`: a self-contained page with
audio, spectrograms and transcripts).

Everything but `to_dict` works on the results *dict* (the ``results.json`` schema, format
``speechtok.bench``), of format version 1 or 2 (`normalize`), so a report can be rebuilt from a
``results.json`` alone. matplotlib is imported only when plotting.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from speechtok.atomic import atomic_path, atomic_write_text

if TYPE_CHECKING:  # the runner imports torch; the report does not need it
    from .runner import BenchReport

REPORT_FORMAT = "speechtok.bench"
REPORT_VERSION = 2  # results.json as written by to_dict (bench_results.VERSION)

COLUMNS = [  # (field, header, format)
    ("tokenizer", "tokenizer", "{}"), ("num_codebooks", "k", "{}"), ("bitrate", "kbps", "{:.3g}"),
    ("entropy_bitrate", "entropy kbps", "{:.3g}"), ("token_rate", "tokens/s", "{:.4g}"),
    ("codebook_used", "used", "{:.2f}"), ("mel_distance", "mel ↓", "{:.3f}"),
    ("stft_distance", "STFT ↓", "{:.3f}"), ("si_sdr", "SI-SDR dB ↑", "{:.2f}"), ("stoi", "STOI ↑", "{:.3f}"),
    ("pesq", "PESQ ↑", "{:.2f}"), ("wer", "WER ↓", "{:.1%}"), ("cer", "CER ↓", "{:.1%}"),
    ("speaker_similarity", "spk sim ↑", "{:.3f}"), ("dnsmos_sig", "DNSMOS SIG ↑", "{:.2f}"),
    ("dnsmos_bak", "DNSMOS BAK ↑", "{:.2f}"), ("dnsmos_ovrl", "DNSMOS OVRL ↑", "{:.2f}"),
    ("visqol", "ViSQOL ↑", "{:.2f}"), ("f0_rmse_cents", "F0 RMSE cents ↓", "{:.0f}"),
    ("f0_corr", "F0 corr ↑", "{:.3f}"), ("voicing_error", "voicing err ↓", "{:.3f}"),
    ("pnmi", "PNMI cb0 ↑", "{:.3f}"), ("abx_within", "ABX within ↓", "{:.1%}"),
    ("abx_across", "ABX across ↓", "{:.1%}"),
    ("encode_rtf", "enc RTF", "{:.3g}"), ("decode_rtf", "dec RTF", "{:.3g}"),
    ("encode_throughput", "enc h/core-h", "{:.3g}"), ("decode_throughput", "dec h/core-h", "{:.3g}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
]
# columns shown only when some row has a value (the metrics a run may not compute)
OPTIONAL_COLUMNS = {"speaker_similarity", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "visqol",
                    "f0_rmse_cents", "f0_corr", "voicing_error", "pnmi", "abx_within", "abx_across",
                    "encode_throughput", "decode_throughput"}
_KBPS = {"bitrate", "entropy_bitrate"}

METRICS = [  # Pareto metrics: (field, axis label, "lower" or "higher" is better)
    ("wer", "WER of resynthesis", "lower"), ("cer", "CER of resynthesis", "lower"),
    ("mel_distance", "mel distance", "lower"), ("stft_distance", "multi-scale STFT distance", "lower"),
    ("si_sdr", "SI-SDR (dB)", "higher"), ("stoi", "STOI", "higher"), ("pesq", "PESQ (wideband)", "higher"),
    ("speaker_similarity", "speaker similarity", "higher"), ("dnsmos_sig", "DNSMOS SIG", "higher"),
    ("dnsmos_bak", "DNSMOS BAK", "higher"), ("dnsmos_ovrl", "DNSMOS OVRL", "higher"),
    ("visqol", "ViSQOL", "higher"), ("f0_rmse_cents", "F0 RMSE (cents)", "lower"),
    ("f0_corr", "F0 correlation", "higher"), ("voicing_error", "voicing error", "lower"),
    ("abx_within", "phone ABX error, within speaker", "lower"),
    ("abx_across", "phone ABX error, across speakers", "lower"), ("pnmi", "PNMI of the first codebook", "higher"),
]
PERCENT = {"wer", "cer", "abx_within", "abx_across"}
_PLOT_NAMES = {"mel_distance": "mel", "stft_distance": "stft"}  # bitrate_vs_mel.png as before


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
    """A `BenchReport` as the results.json object (format version 2: `bench_results.report_dict`)."""
    from .bench_results import report_dict

    return report_dict(report)


def value(d: dict, key: str) -> Optional[float]:
    """``d[key]`` as a finite number, else None (absent, null, NaN or not a number)."""
    v = d.get(key) if isinstance(d, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def normalize(results: Union[dict, Any]) -> dict:
    """A results dict of format version 1 or 2 (or a `BenchReport`) as a version-2 view.

    Version 1 keeps the original audio's scores in ``original_wer``, ``original_cer`` and
    ``original_wer_by_source``; version 2 in ``original: {wer, cer, ..., by_source}``. The view
    always has ``original``, ``rows`` (each with ``ci`` and ``wer_by_source``), ``utterances``,
    ``examples``, ``notes``, ``config``, ``environment`` and ``command``; the input is not changed.
    """
    if not isinstance(results, dict):
        results = to_dict(results)
    if results.get("format", REPORT_FORMAT) != REPORT_FORMAT:
        raise ValueError(f"not a speechtok benchmark result: format {results.get('format')!r}")
    d = dict(results)
    original = dict(d.get("original") or {})
    for key, old in (("wer", "original_wer"), ("cer", "original_cer"), ("by_source", "original_wer_by_source")):
        if key not in original and old in d:
            original[key] = d[old]
    original["by_source"] = dict(original.get("by_source") or {})
    d["original"] = original
    # a row's optional metrics may sit in a nested "extra" dict (BenchRow.extra): flattened here
    d["rows"] = [{**(r.get("extra") or {}), **r, "ci": dict(r.get("ci") or {}),
                  "wer_by_source": dict(r.get("wer_by_source") or {})} for r in d.get("rows") or []]
    for key in ("utterances", "examples", "notes"):
        d[key] = list(d.get(key) or [])
    for key in ("config", "environment"):
        d[key] = dict(d.get(key) or {})
    d["command"] = d.get("command") or ""
    d.setdefault("device", d["config"].get("device") or d["environment"].get("device"))
    return d


def present_metrics(results: dict) -> list[tuple[str, str, str]]:
    """The `METRICS` entries some row of ``results`` has a value for."""
    rows = normalize(results)["rows"]
    return [m for m in METRICS if any(value(r, m[0]) is not None for r in rows)]


def columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The `COLUMNS` to show for ``rows``: all but the optional metrics no row has."""
    return [c for c in COLUMNS if c[0] not in OPTIONAL_COLUMNS or any(value(r, c[0]) is not None for r in rows)]


def format_value(name: str, v: Any, fmt: Optional[str] = None) -> str:
    """A table cell: "–" when missing; bitrates in kbps; ``fmt`` defaults to the column's."""
    if fmt is None:
        fmt = next((f for n, _, f in COLUMNS if n == name), "{:.3g}")
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if name in _KBPS:
        v = v / 1000
    return fmt.format(v)


def _pct(v: Any) -> str:
    return "–" if value({"v": v}, "v") is None else f"{v:.1%}"


def to_markdown(report: Union[dict, BenchReport]) -> str:
    """The Markdown summary: command, data, the original's WER, one table row per (tokenizer, k),
    WER by source when there are several sources."""
    d = normalize(report)
    rows, cfg, orig = d["rows"], d["config"], d["original"]
    lines = ["# speechtok benchmark", ""]
    if d["command"]:
        lines += ["Made by:", "", "```", d["command"], "```", ""]
    items = rows[0].get("items", 0) if rows else 0
    minutes = (value(rows[0], "audio_seconds") or 0.0) / 60 if rows else 0.0
    max_s = value(cfg, "max_seconds")
    lines += [f"Data: `{d.get('data', '')}` — {items} utterances, {minutes:.1f} min (round-robin over sources"
              + (f", ≤ {max_s:g} s each" if max_s is not None else "") + f"). Metrics at {cfg.get('eval_rate', '?')} Hz."
              f" Device: {d.get('device') or '?'}.", ""]
    if d.get("asr"):
        extra = "".join(f", {h.rstrip(' ↓↑')} {format_value(n, orig.get(n), f)}" for n, h, f in COLUMNS
                        if n not in ("wer", "cer") and value(orig, n) is not None)
        lines += [f"ASR: {d['asr']}. Original audio: WER {_pct(orig.get('wer'))}, CER {_pct(orig.get('cer'))}{extra} "
                  "over the same utterances and references as the resyntheses: the manifest text, or for "
                  "utterances without text the ASR transcript of the original (which thus adds words "
                  "but no errors to the original's WER).", ""]
    cols = columns(rows)
    lines += ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(format_value(n, r.get(n), f) for n, _, f in cols) + " |")
    sources = sorted(orig["by_source"])
    if len(sources) > 1:
        lines += ["", "WER by source:", "", "| tokenizer | k | " + " | ".join(sources) + " |",
                  "|" + "---|" * (2 + len(sources)),
                  "| original audio | – | " + " | ".join(_pct(orig["by_source"][s]) for s in sources) + " |"]
        for r in rows:
            if r["wer_by_source"]:
                lines.append(f"| {r['tokenizer']} | {r['num_codebooks']} | "
                             + " | ".join(_pct(r["wer_by_source"].get(s)) for s in sources) + " |")
    gpu = str(d.get("device") or "").startswith("cuda")
    lines += ["", "RTF: compute seconds per second of audio (lower is faster; < 1 is faster than real time). "
              + ("h/core-h: hours of audio per GPU-hour (1 / RTF). " if gpu else
                 f"h/core-h: hours of audio per CPU-core-hour (1 / (RTF x {d['environment'].get('cpu_threads', '?')} "
                 "threads)). ")
              + "Peak MB: CUDA peak allocated on GPU, process peak RSS on CPU. "
              "used: fraction of codebook entries used (mean over codebooks)."
              + (" PNMI cb0: phone-normalised mutual information of the first codebook's codes (speech frames); "
                 "ABX: phone ABX error of the first k codebooks as one-hot frames "
                 f"({cfg.get('abx_mode', 'phone')} items; chance 50 %), within and across speakers "
                 "(`speechtok.benchmarks.bench_phones`)."
                 if any(value(r, m) is not None for r in rows for m in ("pnmi", "abx_within", "abx_across")) else ""),
              ""]
    for note in d["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines)


def plot_name(metric: str) -> str:
    """File name of a metric's Pareto plot: ``bitrate_vs_<short name>.png``."""
    return f"bitrate_vs_{_PLOT_NAMES.get(metric, metric)}.png"


def pareto_plot(results: Union[dict, BenchReport], metric: str, path: Union[str, Path]) -> bool:
    """Nominal bitrate (kbps, log scale) vs ``metric``: one line per tokenizer through its numbers
    of codebooks (markers labelled k=..., error bars from ``ci`` where present), the original
    audio's value as a dashed line where it exists. Returns False (and writes nothing) when no
    row has the metric."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'speechtok[bench]'") from e
    d = normalize(results)
    label, better = next(((lb, b) for m, lb, b in METRICS if m == metric), (metric, None))
    series: dict[str, list[tuple[float, float, int, Optional[list]]]] = {}
    for r in d["rows"]:
        y, x = value(r, metric), value(r, "bitrate")
        if y is not None and x is not None and x > 0:
            series.setdefault(str(r["tokenizer"]), []).append((x / 1000, y, r.get("num_codebooks"), r["ci"].get(metric)))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=100)
    for name, pts in series.items():
        pts.sort(key=lambda p: p[0])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        yerr = None
        if any(p[3] for p in pts):
            lo = [max(0.0, p[1] - p[3][0]) if p[3] and p[3][0] is not None else 0.0 for p in pts]
            hi = [max(0.0, p[3][1] - p[1]) if p[3] and p[3][1] is not None else 0.0 for p in pts]
            yerr = [lo, hi]
        ax.errorbar(xs, ys, yerr=yerr, marker="o", ms=5, capsize=2, label=name)
        for bx, by, k, _ in pts:
            ax.annotate(f"k={k}", (bx, by), textcoords="offset points", xytext=(3, 3), fontsize=7)
    orig = value(d["original"], metric)
    if orig is not None:
        ax.axhline(orig, color="gray", ls="--", lw=1, label="original audio")
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.1)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    xs = [p[0] for pts in series.values() for p in pts]
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    narrow = max(xs) / min(xs) < 10  # under a decade: label the minor ticks too
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}") if narrow else NullFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    if metric in PERCENT:
        from matplotlib.ticker import PercentFormatter

        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("nominal bitrate (kbps, log scale)")
    ax.set_ylabel(f"{label} ({better} is better)" if better else label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def pareto_plots(results: Union[dict, BenchReport], out_dir: Union[str, Path]) -> dict[str, Path]:
    """One `pareto_plot` per metric some row has, into ``out_dir``; returns {metric: path}."""
    d, out = normalize(results), Path(out_dir)
    paths = {}
    for metric, _, _ in present_metrics(d):
        if pareto_plot(d, metric, out / plot_name(metric)):
            paths[metric] = out / plot_name(metric)
    return paths


def write_report(report: Union[dict, BenchReport], out_dir: Union[str, Path], plots: bool = True,
                 html: bool = True) -> list[Path]:
    """Write results.json, results.md, (with matplotlib) the Pareto plots and ``report.html``
    (`speechtok.benchmarks.html_report.write_html_report`); returns the paths written.

    ``report`` is a `BenchReport` or a results dict; audio the dict's ``examples`` refer to is
    read from ``out_dir`` (the runner writes it there)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = report if isinstance(report, dict) else to_dict(report)
    written = []
    atomic_write_text(out / "results.json", json.dumps(_clean(d), indent=2, ensure_ascii=False) + "\n")
    written.append(out / "results.json")
    md = to_markdown(d)
    plot_paths = pareto_plots(d, out) if plots else {}
    labels = dict((m, lb) for m, lb, _ in METRICS)
    for metric, path in plot_paths.items():
        written.append(path)
        md += f"\n![{labels[metric]}]({path.name})\n"
    atomic_write_text(out / "results.md", md)
    written.append(out / "results.md")
    if html:
        from .html_report import write_html_report

        written.append(write_html_report(d, out, plots=plots, plot_paths=plot_paths))
    return written
