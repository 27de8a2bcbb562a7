"""report.html (speechtok.benchmarks.html_report) and the Pareto plots of speechtok.benchmarks.report,
on a synthetic version-2 results dict with tiny WAVs, on a version-1 file, and in headless Chromium."""
from __future__ import annotations

import base64
import copy
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from speechtok.benchmarks.html_report import COPY_SCRIPT, align_words, log_mel, write_html_report
from speechtok.benchmarks.report import METRICS, normalize, pareto_plots, plot_name, to_markdown, write_report

pytest.importorskip("matplotlib", reason="the report's plots need the bench extra")

HOSTILE = "<script>alert(1)</script>"
REPO = Path(__file__).resolve().parents[2]


class Page(HTMLParser):
    """Collects what the tests look at: summary rows, example cards with their audio, all URLs."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.urls, self.summary_rows, self.examples = [], [], [], []
        self.audio_ids: dict = {}  # id of an embedded player -> its src (players with data-same copy it)
        self._in_summary = False
        self._text_sink = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "poster", "data") and v]
        if tag == "table" and "summary" in (a.get("class") or "").split():
            self._in_summary = True
            self.summary_rows.append([])
        if self._in_summary and tag == "tr" and "row" in (a.get("class") or "").split():
            self.summary_rows[-1].append((a["data-tokenizer"], int(a["data-k"])))
        if tag == "div" and "ex" in (a.get("class") or "").split():
            self.examples.append({"id": a["data-id"], "audio": [], "text": ""})
        if tag == "audio" and a.get("id"):
            self.audio_ids[a["id"]] = a["src"]
        if tag == "audio" and self.examples:
            self.examples[-1]["audio"].append(a["src"] if "src" in a else self.audio_ids[a["data-same"]])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_summary = False

    def handle_data(self, data):
        if self.examples:
            self.examples[-1]["text"] += data


def _wav(path: Path, freq: float, seconds: float = 0.3, sr: int = 16000) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32), sr, subtype="PCM_16")
    return path


def _results(out: Path) -> dict:
    """A version-2 results dict over two tokenizers (one with 2 bitrates), its example WAVs in out/audio."""
    specs = [("codec-a", 1, 1500.0, 0.4), ("codec-a", 2, 3000.0, 0.2), ("mulaw-16k", 1, 128000.0, 0.05)]
    rows, utts, examples = [], [], []
    for tok, k, bitrate, wer in specs:
        row = {"tokenizer": tok, "model_id": f"{tok}@0", "num_codebooks": k, "bitrate": bitrate,
               "entropy_bitrate": 0.9 * bitrate, "token_rate": 50.0 * k, "codebook_used": 0.8,
               "mel_distance": 1.0 - wer, "stft_distance": 2.0 - wer, "si_sdr": 30 * (1 - wer), "stoi": None,
               "pesq": 1 + 3 * (1 - wer), "wer": wer, "cer": wer / 2, "encode_rtf": 0.01, "decode_rtf": 0.02,
               "peak_memory_mb": 500.0, "items": 2, "audio_seconds": 0.6,
               "ci": {"wer": [wer - 0.05, wer + 0.05], "pesq": [0.5 + 3 * (1 - wer), 1.5 + 3 * (1 - wer)]},
               "wer_by_source": {"a": wer, "b": wer / 2}}
        if tok == "codec-a":  # an optional metric only one tokenizer has
            row["dnsmos_ovrl"] = 2.5 + k * 0.3
        rows.append(row)
        for i in range(2):
            uid = f"{HOSTILE}u{i}" if i == 0 else f"u{i}"
            utts.append({"tokenizer": tok, "num_codebooks": k, "id": uid, "source": "ab"[i], "speaker": "s1",
                         "seconds": 0.3, "text": "the cat sat on the mat", "asr_original": "the cat sat on the mat",
                         "asr_resynth": f"the dog sat on mat {HOSTILE}", "wer": 0.5, "cer": 0.3, "pesq": 2.0})
            stem = f"{tok}_k{k}_u{i}"
            examples.append({"tokenizer": tok, "num_codebooks": k, "id": uid, "text": "the cat sat on the mat",
                             "original": f"audio/u{i}.orig.wav", "resynth": f"audio/{stem}.wav"})
            _wav(out / "audio" / f"u{i}.orig.wav", 220 + 110 * i)
            _wav(out / "audio" / f"{stem}.wav", 240 + 110 * i + 40 * k)
    return {"format": "speechtok.bench", "format_version": 2, "command": f"speechtok bench codec-a mulaw-16k {HOSTILE}",
            "data": "manifest.jsonl", "asr": "echo", "config": {"max_items": 2, "eval_rate": 16000, "device": "cpu"},
            "environment": {"python": "3.11", "gpu": None},
            "original": {"wer": 0.02, "cer": 0.01, "dnsmos_ovrl": 3.4, "by_source": {"a": 0.0, "b": 0.04}},
            "rows": rows, "utterances": utts, "examples": examples, "notes": [f"a note {HOSTILE}"]}


def _parse(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return text, page


def test_align_words_marks_substitutions_insertions_deletions():
    ops = align_words("The cat sat on the mat.", "the dog sat on mat today")
    assert [o for o, _, _ in ops] == ["=", "S", "=", "=", "D", "=", "I"]
    assert ops[1] == ("S", "cat", "dog") and ops[4] == ("D", "the", None) and ops[6] == ("I", None, "today")
    # digits and punctuation compare as WER normalizes them; the edit count is the WER numerator
    assert all(o == "=" for o, _, _ in align_words("Call 7 now!", "call seven now"))
    assert align_words("", "hello") == [("I", None, "hello")] and align_words("a b", "") == [("D", "a", None), ("D", "b", None)]


def test_report_page(tmp_path):
    results = _results(tmp_path)
    paths = write_report(copy.deepcopy(results), tmp_path)
    assert {p.name for p in paths} >= {"results.json", "results.md", "report.html", "bitrate_vs_wer.png"}
    assert json.loads((tmp_path / "results.json").read_text()) == results
    text, page = _parse(tmp_path / "report.html")

    # three summary tables (rate/speed, signal, speaker/quality: DNSMOS is there), each with every row
    assert page.summary_rows == [[(r["tokenizer"], r["num_codebooks"]) for r in results["rows"]]] * 3
    # every example: two players (original, resynthesis) whose data URIs decode to the WAV files
    assert [e["id"] for e in page.examples] == [e["id"] for e in results["examples"]]
    for card, ex in zip(page.examples, results["examples"]):
        assert len(card["audio"]) == 2
        for src, rel in zip(card["audio"], (ex["original"], ex["resynth"])):
            head, data = src.split(",", 1)
            assert head == "data:audio/wav;base64" and base64.b64decode(data) == (tmp_path / rel).read_bytes()
    # transcripts, ids, notes and the command are text, never markup
    assert HOSTILE not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # the only script is the page's own (copying a shared original's source into its later players)
    assert page.tags.count("script") == 1 and text.count("<script") == 1 and COPY_SCRIPT in text
    # each original is embedded once although every tokenizer's card plays it
    for rel in {ex["original"] for ex in results["examples"]}:
        assert text.count(base64.b64encode((tmp_path / rel).read_bytes()).decode()) == 1
    assert text.count("data-same=") == len(results["examples"]) - 2
    card = page.examples[0]["text"]
    assert "the cat sat on the mat" in card and f"dog sat on the mat {HOSTILE}" in card  # "the" shown struck through
    assert '<span class="sub" title="reference: cat">dog</span>' in text and '<del title="deleted">the</del>' in text
    # nothing loaded from the network: every URL is a data URI
    assert page.urls and all(u.startswith("data:") for u in page.urls)
    assert not any(s in text for s in ('src="http', "src='http", 'href="http', "href='http", "url(http", "//cdn"))
    # the CI under its value, optional metric columns present, total audio size stated
    assert '<span class="ci" title="95% confidence interval">[35.0%, 45.0%]</span>' in text and "DNSMOS OVRL" in text and "MiB of audio embedded" in text
    assert text.count('<details class="utts"') == len(results["rows"])  # per-utterance tables, per (tokenizer, k)
    # all 7 plots: 3 headline ones, the other 4 folded
    plots = text[text.index("Bitrate vs metrics"):text.index("Listen: examples")]
    assert plots.count("<img") == 7 and plots.index("(4 more plots)") > plots.index("<img")
    assert text.count('alt="log-mel spectrograms"') == len(results["examples"])


def test_audio_over_the_limit_is_linked_not_embedded(tmp_path):
    results = _results(tmp_path)
    page_path = write_html_report(results, tmp_path, plots=False, max_embed_bytes=0)
    _, page = _parse(page_path)
    srcs = [s for e in page.examples for s in e["audio"]]
    assert srcs and all(s.startswith("audio/") and (tmp_path / s).is_file() for s in srcs)


def test_untrusted_audio_paths_stay_inside_the_results_dir(tmp_path):
    results = _results(tmp_path / "res")
    secret = _wav(tmp_path / "outside.wav", 100)
    results["examples"][0]["original"] = "../outside.wav"
    text, page = _parse(write_html_report(results, tmp_path / "res", plots=False))
    assert len(page.examples[0]["audio"]) == 1 and "audio file missing" in text
    assert base64.b64encode(secret.read_bytes()).decode() not in text


def test_version_1_file_renders(tmp_path):
    v1 = json.loads((REPO / "benchmarks" / "results" / "bench_real" / "results.json").read_text())
    assert v1["format_version"] == 1
    text, page = _parse(write_html_report(v1, tmp_path))
    assert page.summary_rows == [[(r["tokenizer"], r["num_codebooks"]) for r in v1["rows"]]] * 2
    assert page.examples == [] and f"WER {v1['original_wer']:.1%}" in text and 'id="by-source"' in text
    assert normalize(v1)["original"]["by_source"] == v1["original_wer_by_source"]
    assert to_markdown(v1).count("| mulaw-16k |") == 2


def test_a_pareto_plot_per_metric_present(tmp_path):
    results = _results(tmp_path)
    results["rows"][0]["visqol"] = float("nan")  # NaN or null is not "present"
    present = {m for m, _, _ in METRICS if any(r.get(m) is not None and r.get(m) == r.get(m) for r in results["rows"])}
    assert "stoi" not in present and "dnsmos_ovrl" in present and "visqol" not in present
    paths = pareto_plots(results, tmp_path / "plots")
    assert set(paths) == present
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(plot_name(m) for m in present)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths.values())


def test_log_mel_peaks_at_the_tone():
    sr = 16000
    x = np.sin(2 * math.pi * 1000 * np.arange(sr // 2) / sr)
    s = log_mel(x, sr, n_mels=64)
    assert s.shape[0] == 64 and abs(s.shape[1] - 48) <= 2
    f1000 = 2595 * math.log10(1 + 1000 / 700) / (2595 * math.log10(1 + 8000 / 700)) * 65 - 1
    assert abs(int(np.argmax(s.mean(axis=1))) - f1000) <= 1.5


@pytest.mark.timeout(180)
def test_screenshot_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not on PATH")
    from PIL import Image

    page = write_html_report(_results(tmp_path), tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
                    page.as_uri()], check=True, capture_output=True, timeout=150)
    img = Image.open(shot)
    assert img.size == (1280, 2000)
    px = np.asarray(img.convert("L"), dtype=np.float64)
    assert px.std() > 10  # not a blank page
    # rendered content (table, plots, cards) reaches well down the page, not only the title
    assert (px[1000:] < 200).mean() > 0.01
    # after the page's script ran, every player has its audio (shared originals copied in)
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, timeout=150, text=True).stdout
    players = re.findall(r"<audio[^>]*>", dom)
    assert len(players) == 2 * len(_results(tmp_path)["examples"])
    assert all(re.search(r'src="data:audio/wav;base64,', p) for p in players)
