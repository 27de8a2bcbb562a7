"""``report.html``: a self-contained page to read and listen to a benchmark (`write_html_report`).

One file, no network: CSS inline, the Pareto plots as base64 PNGs, and for each example (per
tokenizer and number of codebooks, the few utterances the runner saved under ``audio/``) the
original and the resynthesis as ``<audio controls>`` with the audio embedded as data URIs (each
file once; a one-line script gives later players of the same file its source), their
log-mel spectrograms side by side, and the transcripts (reference, ASR of the original, ASR of
the resynthesis) with word errors marked. Also the summary table (means with their 95 % CI where the
results have one), WER by source, a collapsible per-utterance table per (tokenizer, k), the notes,
the command that reproduces the run and its environment. Every string from the results is
escaped. Reads results of format version 1 or 2 (`speechtok.benchmarks.report.normalize`).
"""
from __future__ import annotations

import base64
import html
import io
import mimetypes
from pathlib import Path
from typing import Optional, Union

from speechtok.atomic import atomic_write_text

from .report import COLUMNS, METRICS, PERCENT, columns, format_value, normalize, pareto_plots, value

MAX_EMBED_BYTES = 64 * 2 ** 20  # audio beyond this is linked (relative path), not embedded

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;
max-width:1240px;padding:16px 20px;color:#1d232a;background:#fff}
h1{font-size:22px;margin:4px 0 8px}h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #dde2e8}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#4a5561}.meta b{color:#1d232a}
pre{background:#f4f6f8;padding:8px 10px;border-radius:4px;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}th,td{padding:3px 5px;border-bottom:1px solid #e6e9ed;
text-align:right;white-space:nowrap}th{background:#f4f6f8;white-space:normal;vertical-align:bottom}
td.l,th.l{text-align:left}
tr.orig td{background:#fbf7e9;font-style:italic}.ci{display:block;color:#7a8591;font-size:10px}
.scroll{overflow-x:auto}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:8px}
.plots img{width:100%;border:1px solid #e6e9ed;border-radius:4px}
.ex{border:1px solid #e0e4e9;border-radius:6px;padding:8px 10px;margin:8px 0;display:grid;
grid-template-columns:minmax(300px,1fr) minmax(380px,1.3fr);gap:10px}
.ex .id{font-weight:600}.ex audio{width:100%;height:32px}.lbl{font-size:12px;color:#4a5561}
.ex img{width:100%}.tr{font-size:12.5px;margin:2px 0}.tr .lbl{display:inline-block;width:88px}
.sub{background:#fde2c8;border-radius:2px}.ins{background:#d8ecff;border-radius:2px}
del{background:#f9d0d0;color:#8a1f1f}.legend span{margin-right:10px}.warn{color:#9a4b00}
details{margin:4px 0}summary{cursor:pointer;font-weight:600}
"""


def align_words(reference: str, hypothesis: str) -> list[tuple[str, Optional[str], Optional[str]]]:
    """Word alignment of ``hypothesis`` to ``reference`` (minimum edits): a list of
    ``(op, ref_word, hyp_word)`` with op "=" (match), "S" (substitution), "D" (deletion: a
    reference word missing) or "I" (insertion). Words are whitespace tokens, shown as written and
    compared after `speechtok.benchmarks.metrics.normalize_text` word by word (tokens without a
    letter or digit left are dropped): close to what WER counts, which normalizes whole strings
    (where e.g. "twenty five" becomes one token)."""
    from .metrics import normalize_text

    def words(text):
        keyed = ((w, normalize_text(w)) for w in str(text or "").split())
        return [(w, k) for w, k in keyed if any(c.isalnum() for c in k)]

    ref, hyp = words(reference), words(hypothesis)
    n, m = len(ref), len(hyp)
    # cost (edits, -matches): fewest edits, and among those the most matches (the most readable)
    cost = [[(i + j, 0) for j in range(m + 1)] for i in range(n + 1)]

    def diag(i, j):
        same = ref[i - 1][1] == hyp[j - 1][1]
        c = cost[i - 1][j - 1]
        return (c[0] + (not same), c[1] - same)

    def step(c):
        return (c[0] + 1, c[1])

    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(diag(i, j), step(cost[i - 1][j]), step(cost[i][j - 1]))
    out, i, j = [], n, m
    while i or j:
        if i and j and cost[i][j] == diag(i, j):
            out.append(("=" if ref[i - 1][1] == hyp[j - 1][1] else "S", ref[i - 1][0], hyp[j - 1][0]))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == step(cost[i - 1][j]):
            out.append(("D", ref[i - 1][0], None))
            i -= 1
        else:
            out.append(("I", None, hyp[j - 1][0]))
            j -= 1
    return out[::-1]


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _marked(reference: str, hypothesis: str) -> str:
    """``hypothesis`` as HTML with its word errors against ``reference`` marked."""
    ops = align_words(reference, hypothesis)
    parts = [] if any(h is not None for _, _, h in ops) else [f"<i>(no words{': ' + _e(hypothesis) if str(hypothesis or '').strip() else ''})</i>"]
    for op, r, h in ops:
        if op == "=":
            parts.append(_e(h))
        elif op == "S":
            parts.append(f'<span class="sub" title="reference: {_e(r)}">{_e(h)}</span>')
        elif op == "I":
            parts.append(f'<span class="ins" title="inserted">{_e(h)}</span>')
        else:
            parts.append(f'<del title="deleted">{_e(r)}</del>')
    return " ".join(parts)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _inside(out: Path, rel: str) -> Optional[Path]:
    """``out / rel`` when it is a file inside ``out`` (paths in results files are not trusted)."""
    if not rel:
        return None
    p = (out / str(rel)).resolve()
    return p if p.is_file() and p.is_relative_to(out.resolve()) else None


def _read_mono(path: Path):
    import numpy as np
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.asarray(x.mean(axis=1), dtype=np.float64), int(sr)


def log_mel(x, sample_rate: int, n_mels: int = 64, fmax: float = 8000.0):
    """Log-mel power spectrogram ``[n_mels, frames]`` in dB (25 ms Hann windows, 10 ms hop)."""
    import numpy as np

    win, hop = max(16, int(0.025 * sample_rate)), max(1, int(0.010 * sample_rate))
    n_fft = 1 << (win - 1).bit_length()
    x = np.pad(x, (0, max(0, win - len(x))))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * np.hanning(win)
    power = np.abs(np.fft.rfft(frames, n_fft, axis=1)) ** 2
    fmax = min(fmax, sample_rate / 2)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731 (HTK mel scale)
    edges = 700 * (10 ** (np.linspace(0, mel(fmax), n_mels + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return 10 * np.log10(np.maximum(fb @ power.T, 1e-10))


def spectrogram_png(original: Path, resynth: Path) -> bytes:
    """PNG of the log-mel spectrograms of ``original`` and ``resynth`` side by side (one dB scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [log_mel(*_read_mono(p)) for p in (original, resynth)]
    top = max(float(s.max()) for s in specs)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 1.55), dpi=80, sharey=True)
    for ax, s, title in zip(axes, specs, ("original", "resynthesis")):
        ax.imshow(s, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                  extent=(0, s.shape[1] / 100, 0, s.shape[0]), interpolation="nearest")
        ax.set_title(title, fontsize=8, pad=2)
        ax.tick_params(labelsize=6, length=2, pad=1)
        ax.set_xlabel("s", fontsize=6, labelpad=0)
    axes[0].set_ylabel("mel bin", fontsize=6, labelpad=1)
    fig.subplots_adjust(left=0.07, right=0.995, top=0.86, bottom=0.2, wspace=0.05)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _cell(row: dict, name: str, fmt: str) -> str:
    """A summary cell: the value and, below it, its 95 % CI (bootstrap intervals are not symmetric)."""
    text = _e(format_value(name, row.get(name), fmt))
    ci = (row.get("ci") or {}).get(name)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(value({"v": c}, "v") is not None for c in ci):
        lo, hi = (format_value(name, c, fmt) for c in ci)
        text += f'<span class="ci" title="95% confidence interval">[{_e(lo)}, {_e(hi)}]</span>'
    return text


SUMMARY_GROUPS = [  # one table each, after tokenizer, k and kbps (columns in no group join the first)
    ("Bitrate, intelligibility and speed", ("entropy_bitrate", "token_rate", "codebook_used", "wer", "cer",
                                            "encode_rtf", "decode_rtf", "encode_throughput",
                                            "decode_throughput", "peak_memory_mb")),
    ("Signal reconstruction (against the original)", ("mel_distance", "stft_distance", "si_sdr", "stoi", "pesq",
                                                      "visqol")),
    ("Speaker, quality and prosody", ("speaker_similarity", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl",
                                      "f0_rmse_cents", "f0_corr", "voicing_error")),
    ("Phone information of the tokens (PNMI of the first codebook, phone ABX of the first k)",
     ("pnmi", "abx_within", "abx_across")),
]
_KEY = ("tokenizer", "num_codebooks", "bitrate")
HEADLINE_PLOTS = ("wer", "pesq", "speaker_similarity", "dnsmos_ovrl", "mel_distance", "si_sdr")  # first 3 shown


def _summary_table(d: dict, title: str, cols: list) -> str:
    rows, orig = d["rows"], d["original"]
    head = "".join(f'<th class="{"l" if n == "tokenizer" else ""}">{_e(h)}</th>' for n, h, _ in cols)
    body = []
    if any(value(orig, n) is not None for n, _, _ in cols):
        cells = ["original audio" if n == "tokenizer" else _cell(orig, n, f) if value(orig, n) is not None
                 else "" for n, _, f in cols]
        body.append('<tr class="orig">' + "".join(f'<td class="{"l" if i == 0 else ""}">{c}</td>'
                                                 for i, c in enumerate(cells)) + "</tr>")
    for r in rows:
        cells = "".join(f'<td class="{"l" if n == "tokenizer" else ""}">{_cell(r, n, f)}</td>' for n, _, f in cols)
        body.append(f'<tr class="row" data-tokenizer="{_e(r.get("tokenizer"))}" '
                    f'data-k="{_e(r.get("num_codebooks"))}">{cells}</tr>')
    return (f'<h3>{_e(title)}</h3><div class="scroll"><table class="summary"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _summary(d: dict) -> str:
    """The summary: one table per `SUMMARY_GROUPS` entry that has a column to show."""
    cols = {c[0]: c for c in columns(d["rows"])}
    grouped = {n for _, names in SUMMARY_GROUPS for n in names}
    groups = [(t, list(names)) for t, names in SUMMARY_GROUPS]
    groups[0][1].extend(n for n in cols if n not in grouped and n not in _KEY)
    return "".join(_summary_table(d, title, [cols[n] for n in (*_KEY, *names) if n in cols])
                   for title, names in groups if any(n in cols for n in names))


def _pct(v) -> str:
    return "–" if value({"v": v}, "v") is None else f"{v:.1%}"


def _by_source(d: dict) -> str:
    orig, rows = d["original"]["by_source"], d["rows"]
    sources = sorted(set(orig).union(*(r["wer_by_source"] for r in rows)))
    if not sources:
        return ""
    head = '<th class="l">tokenizer</th><th>k</th>' + "".join(f"<th>{_e(s)}</th>" for s in sources)
    body = ['<tr class="orig"><td class="l">original audio</td><td></td>'
            + "".join(f"<td>{_pct(orig.get(s))}</td>" for s in sources) + "</tr>"] if orig else []
    body += [f'<tr><td class="l">{_e(r["tokenizer"])}</td><td>{_e(r.get("num_codebooks"))}</td>'
             + "".join(f"<td>{_pct(r['wer_by_source'].get(s))}</td>" for s in sources) + "</tr>"
             for r in rows if r["wer_by_source"]]
    return (f'<h2>WER by source</h2><table id="by-source"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


class _Embedder:
    """Audio as data URIs until ``limit`` bytes are embedded, then relative links. A file used again
    (the original beside each tokenizer's resynthesis) is embedded once: later players carry
    ``data-same="<id of the first>"`` and `COPY_SCRIPT` gives them its source when the page loads."""

    def __init__(self, out: Path, limit: int):
        self.out, self.limit, self.embedded, self.linked = out, limit, 0, 0
        self.first: dict[Path, str] = {}

    def audio(self, rel: str, label: str) -> str:
        path = _inside(self.out, rel)
        if path is None:
            return f'<div class="warn">{_e(label)}: audio file missing ({_e(rel)})</div>'
        head = f'<div class="lbl">{_e(label)}</div><audio controls preload="metadata" class="{_e(label)}" '
        if path in self.first:
            return head + f'data-same="{self.first[path]}"></audio>'
        data = path.read_bytes()
        mime = mimetypes.guess_type(path.name)[0] or "audio/wav"
        if mime == "audio/x-wav":
            mime = "audio/wav"
        if self.embedded + len(data) <= self.limit:
            self.embedded += len(data)
            src = _data_uri(data, mime)
            self.first[path] = f"a{len(self.first)}"
            return head + f'id="{self.first[path]}" src="{src}"></audio>'
        self.linked += 1
        return head + f'src="{_e(path.relative_to(self.out.resolve()).as_posix())}"></audio>'


COPY_SCRIPT = ("<script>document.querySelectorAll('audio[data-same]').forEach(function(a){"
               "var s=document.getElementById(a.dataset.same);if(s)a.src=s.src;});</script>")


def _examples(d: dict, out: Path, emb: _Embedder, spectrograms: bool) -> str:
    utts = {(u.get("tokenizer"), u.get("num_codebooks"), u.get("id")): u for u in d["utterances"]}
    bitrate = {(r.get("tokenizer"), r.get("num_codebooks")): r for r in d["rows"]}
    groups: dict[tuple, list[dict]] = {}
    for ex in d["examples"]:
        groups.setdefault((ex.get("tokenizer"), ex.get("num_codebooks")), []).append(ex)
    parts = []
    for (tok, k), exs in groups.items():
        row = bitrate.get((tok, k), {})
        wer = f", WER {_pct(row.get('wer'))}" if value(row, "wer") is not None else ""
        parts.append(f'<h3>{_e(tok)} · k={_e(k)} · {_e(format_value("bitrate", row.get("bitrate")))} kbps{wer}</h3>')
        for ex in exs:
            u = utts.get((tok, k, ex.get("id")), {})
            ref = ex.get("text") or u.get("text") or ""
            lines = [f'<div class="tr"><span class="lbl">reference</span>{_e(ref) or "<i>(none)</i>"}</div>']
            for key, label in (("asr_original", "ASR original"), ("asr_resynth", "ASR resynth")):
                if u.get(key) is not None:
                    lines.append(f'<div class="tr"><span class="lbl">{label}</span>{_marked(ref, u[key])}</div>')
            scores = ", ".join(f"{name.upper()} {format_value(name, u.get(name))}" for name in ("wer", "cer")
                               if value(u, name) is not None)
            img = ""
            po, pr = _inside(out, ex.get("original", "")), _inside(out, ex.get("resynth", ""))
            if spectrograms and po and pr:
                try:
                    img = f'<img alt="log-mel spectrograms" src="{_data_uri(spectrogram_png(po, pr), "image/png")}">'
                except Exception as err:  # an unreadable file should not lose the whole report
                    img = f'<div class="warn">spectrogram failed: {_e(err)}</div>'
            parts.append(
                f'<div class="ex" data-id="{_e(ex.get("id"))}"><div><div class="id">{_e(ex.get("id"))}'
                f' <span class="lbl">{_e(scores)}</span></div>'
                f'{emb.audio(ex.get("original", ""), "original")}{emb.audio(ex.get("resynth", ""), "resynthesis")}'
                f'{"".join(lines)}</div><div>{img}</div></div>')
    if not parts:
        return ""
    legend = ('<p class="legend lbl">Word errors against the reference: <span class="sub">substituted</span>'
              '<span class="ins">inserted</span><del>deleted</del> (hover for the reference word).</p>')
    return "<h2>Listen: examples</h2>" + legend + "".join(parts)


def _utterance_tables(d: dict) -> str:
    groups: dict[tuple, list[dict]] = {}
    for u in d["utterances"]:
        groups.setdefault((u.get("tokenizer"), u.get("num_codebooks")), []).append(u)
    parts = []
    for (tok, k), us in groups.items():
        names = ["wer", "cer"] + [m for m, _, _ in METRICS if m not in PERCENT and any(value(u, m) is not None
                                                                                      for u in us)]
        heads = {n: h for n, h, _ in COLUMNS}
        head = ('<th class="l">id</th><th class="l">source</th><th class="l">speaker</th><th>s</th>'
                + "".join(f"<th>{_e(heads.get(n, n))}</th>" for n in names))
        body = "".join(
            f'<tr><td class="l">{_e(u.get("id"))}</td><td class="l">{_e(u.get("source", ""))}</td>'
            f'<td class="l">{_e(u.get("speaker", "") or "")}</td><td>{_e(format_value("seconds", u.get("seconds"), "{:.1f}"))}</td>'
            + "".join(f"<td>{_e(format_value(n, u.get(n)))}</td>" for n in names) + "</tr>" for u in us)
        parts.append(f'<details class="utts"><summary>{_e(tok)} · k={_e(k)} ({len(us)} utterances)</summary>'
                     f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>')
    return "<h2>Per utterance</h2>" + "".join(parts) if parts else ""


def _kv_table(d: dict, table_id: str) -> str:
    rows = "".join(f'<tr><td class="l">{_e(k)}</td><td class="l">{_e("–" if v is None else v)}</td></tr>'
                   for k, v in d.items())
    return f'<table id="{table_id}"><tbody>{rows}</tbody></table>'


def render_html(results: dict, out_dir: Union[str, Path], plots: Optional[dict] = None,
                spectrograms: bool = True, max_embed_bytes: int = MAX_EMBED_BYTES) -> str:
    """The page as a string (see the module docstring). ``plots``: {metric: PNG path} to embed;
    audio and plots are read relative to ``out_dir``."""
    d, out = normalize(results), Path(out_dir)
    emb = _Embedder(out, max_embed_bytes)
    examples, utterances = _examples(d, out, emb, spectrograms), _utterance_tables(d)
    labels = {m: (lb, b) for m, lb, b in METRICS}
    plots = {m: p for m, p in (plots or {}).items() if m in labels and Path(p).is_file()}
    first = [m for m in HEADLINE_PLOTS if m in plots][:3] or list(plots)[:3]
    imgs, more = ("".join(f'<img alt="{_e(labels[m][0])} vs bitrate ({labels[m][1]} is better)" '
                          f'src="{_data_uri(Path(plots[m]).read_bytes(), "image/png")}">' for m in ms)
                  for ms in (first, [m for m in plots if m not in first]))
    rows, orig, cfg = d["rows"], d["original"], d["config"]
    n_items = rows[0].get("items", "?") if rows else 0
    minutes = (value(rows[0], "audio_seconds") or 0) / 60 if rows else 0
    meta = [f"<b>Data:</b> {_e(d.get('data', ''))} — {_e(n_items)} utterances, {minutes:.1f} min",
            f"<b>ASR:</b> {_e(d.get('asr') or 'none')}"
            + (f" (original audio: WER {_pct(orig.get('wer'))}, CER {_pct(orig.get('cer'))})"
               if value(orig, "wer") is not None else ""),
            f"<b>Tokenizers:</b> {_e(', '.join(dict.fromkeys(str(r.get('tokenizer')) for r in rows)))} "
            f"({len(rows)} rows), metrics at {_e(cfg.get('eval_rate', '?'))} Hz, device {_e(d.get('device') or '?')}"]
    size = f"{emb.embedded / 2 ** 20:.1f} MiB of audio embedded"
    if emb.linked:
        size += f"; {emb.linked} files over the {max_embed_bytes / 2 ** 20:.0f} MiB limit linked from audio/"
    notes = "".join(f"<li>{_e(n)}</li>" for n in d["notes"])
    title = "speechtok benchmark" + (f": {', '.join(dict.fromkeys(str(r.get('tokenizer')) for r in rows))}"
                                     if rows else "")
    body = [f"<h1>{_e(title)}</h1>", "".join(f'<div class="meta">{m}</div>' for m in meta),
            "<h2>Summary</h2>", _summary(d),
            '<p class="lbl">↓ lower is better, ↑ higher is better; kbps: nominal bitrate; under a value its 95% '
            "confidence interval where the run computed one. RTF: compute seconds per audio second.</p>"]
    if imgs:
        body.append(f'<h2>Bitrate vs metrics</h2><div class="plots">{imgs}</div>')
        if more:
            body.append(f'<details class="plots-more"><summary>All metrics ({len(plots) - len(first)} more plots)'
                        f'</summary><div class="plots">{more}</div></details>')
    body += [examples, _by_source(d), utterances]
    if notes:
        body.append(f'<h2>Notes</h2><ul id="notes">{notes}</ul>')
    body += ["<h2>Reproduce</h2>", f'<pre id="command">{_e(d["command"] or "(command not recorded)")}</pre>',
             "<h3>Environment</h3>", _kv_table(d["environment"], "environment"),
             "<h3>Configuration</h3>", _kv_table(cfg, "config"),
             f'<p class="lbl" id="size">{_e(size)}. Format {_e(d.get("format"))} v{_e(d.get("format_version"))}; '
             "this page loads nothing from the network.</p>"]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n" + (COPY_SCRIPT if emb.first else "") + "</body></html>\n")


def write_html_report(results: dict, out_dir: Union[str, Path], plots: bool = True,
                      plot_paths: Optional[dict] = None, max_embed_bytes: int = MAX_EMBED_BYTES) -> Path:
    """Write ``out_dir/report.html`` for ``results`` (a results dict, version 1 or 2; its example
    audio paths are relative to ``out_dir``) and return its path. With ``plots`` (needs matplotlib)
    the Pareto plots ``plot_paths`` ({metric: PNG}; made with `pareto_plots` when None) and the
    spectrograms are embedded."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plots and plot_paths is None:
        plot_paths = pareto_plots(results, out)
    page = render_html(results, out, plots=plot_paths if plots else None, spectrograms=plots,
                       max_embed_bytes=max_embed_bytes)
    atomic_write_text(out / "report.html", page)
    return out / "report.html"


__all__ = ["align_words", "log_mel", "render_html", "spectrogram_png", "write_html_report"]
