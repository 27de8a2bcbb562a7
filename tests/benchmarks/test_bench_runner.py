"""The benchmark runner, report writer and `speechtok bench` on a toy multi-bitrate tokenizer."""
from __future__ import annotations

import json
import math

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
    cfg = BenchConfig(max_items=3, asr=None, intrusive=False)
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
    assert data["format"] == "speechtok.bench" and len(data["rows"]) == 3 and data["rows"][0]["stoi"] is None
    assert (tmp_path / "out" / "bitrate_vs_mel.png").read_bytes()[:4] == b"\x89PNG"


def test_runner_intrusive_metrics_on_real_speech(manifest):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    report = run_benchmark([ResidualScalar(2)], str(manifest), BenchConfig(max_items=2, asr=None))
    lo, hi = report.rows
    assert 1.0 <= lo.pesq < hi.pesq <= 4.65 and 0 < lo.stoi <= hi.stoi <= 1.0
    assert math.isnan(lo.wer) and math.isnan(report.original_wer)


def test_cli_bench(manifest, tmp_path):
    from click.testing import CliRunner

    from speechtok.cli.main import main

    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["bench", "mulaw-16k", "--data", str(manifest), "-o", str(out), "--asr", "none",
                                  "--no-intrusive", "--no-plots", "--max-items", "2"])
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
    (r1, r2) = run_benchmark([tok], str(manifest), BenchConfig(max_items=2, asr=None)).rows
    assert r2.bitrate == 2 * r1.bitrate and r1.entropy_bitrate > 0
    assert all(math.isnan(v) for v in (r1.mel_distance, r1.si_sdr, r1.pesq, r1.wer, r1.decode_rtf))
