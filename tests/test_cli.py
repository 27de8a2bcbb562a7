import json
import os

import soundfile as sf
import torch
from click.testing import CliRunner

from speechtok.cli.main import main
from speechtok.codesfile import load_codes


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return r


def test_help_and_models():
    r = run("--help")
    assert r.exit_code == 0 and "encode" in r.output and "decode" in r.output
    r = run("models")
    assert r.exit_code == 0 and "mulaw-16k" in r.output and "speechtok-16k-50hz (default)" in r.output


def test_encode_mirrors_tree_resumes_and_forces(audio_dir, tmp_path):
    out = tmp_path / "codes"
    r = run("encode", audio_dir, "-o", out, "--model", "mulaw-16k", "--quiet", "--batch-size", 2)
    assert r.exit_code == 0, r.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.stok"))
    assert files == ["a.stok", "b.stok", "sub/c.stok"]
    c = load_codes(out / "b.stok")
    assert c.sample_rate == 16000 and c.lengths.tolist() == [round(0.31 * 16000)]  # 22.05 kHz resampled
    # a rerun skips what exists (resume) and leaves files untouched
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.stok")}
    (out / "a.stok").unlink()
    r = run("encode", audio_dir, "-o", out, "--model", "mulaw-16k", "--quiet")
    assert "encoded 1, skipped 2" in r.output
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.name != "a.stok")
    r = run("encode", audio_dir, "-o", out, "--model", "mulaw-16k", "--quiet", "--force")
    assert "encoded 3, skipped 0" in r.output


def test_batched_cli_equals_one_by_one(audio_dir, tmp_path):
    run("encode", audio_dir, "-o", tmp_path / "b", "--model", "mulaw-16k", "--quiet", "--batch-size", 3)
    run("encode", audio_dir, "-o", tmp_path / "s", "--model", "mulaw-16k", "--quiet", "--batch-size", 1)
    for p in (tmp_path / "b").rglob("*.stok"):
        a, b = load_codes(p), load_codes(tmp_path / "s" / p.relative_to(tmp_path / "b"))
        assert torch.equal(a.codes, b.codes)


def test_bad_file_is_reported_and_skipped(audio_dir, tmp_path):
    (audio_dir / "broken.wav").write_bytes(b"RIFF....garbage")
    out = tmp_path / "codes"
    r = CliRunner().invoke(main, ["encode", str(audio_dir), "-o", str(out), "--model", "mulaw-16k", "--quiet"])
    assert r.exit_code == 1
    assert "broken.wav: unreadable or corrupt" in r.output
    assert len(list(out.rglob("*.stok"))) == 3 and not (out / "broken.stok").exists()


def test_decode_and_info(audio_dir, tmp_path):
    run("encode", audio_dir / "a.wav", "-o", tmp_path / "a.stok", "--model", "mulaw-16k", "--quiet")
    r = run("decode", tmp_path / "a.stok", "-o", tmp_path / "a.flac", "--quiet")  # model from the file
    assert r.exit_code == 0, r.output
    y, sr = sf.read(str(tmp_path / "a.flac"))
    x, _ = sf.read(str(audio_dir / "a.wav"))
    assert sr == 16000 and len(y) == len(x) and abs(y - x).max() < 0.02
    r = run("info", tmp_path / "a.stok", "--json")
    meta = json.loads(r.output)
    assert meta["model_id"].startswith("mulaw-16k@") and meta["seconds"] == 0.2 and meta["bitrate"] == 128000.0
    r = run("info", tmp_path / "a.stok")
    assert "bitrate: 128000.0 bit/s nominal" in r.output


def test_codebooks_option_and_model_mismatch(audio_dir, tmp_path):
    from speechtok.registry import save_model_dir

    other = save_model_dir(tmp_path / "m6", kind="mulaw", name="mulaw-6bit", config={"bits": 6})
    run("encode", audio_dir / "a.wav", "-o", tmp_path / "a.stok", "--model", "mulaw-16k", "--quiet",
        "--codebooks", 1)
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "a.stok"), "-o", str(tmp_path / "x"), "--model",
                                  str(other), "--quiet"])
    assert r.exit_code == 1 and "made by model 'mulaw-16k@" in r.output
    assert not any((tmp_path / "x").rglob("*.wav")) if (tmp_path / "x").exists() else True
