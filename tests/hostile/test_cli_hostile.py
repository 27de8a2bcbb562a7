"""CLI misuse of ``speechtok encode/decode/info``: each is a one-line error naming the option or file,
a non-zero exit and no partial output; file-supplied text reaches the terminal escaped."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from speechtok.cli.main import main


def _wav(path, seconds=0.1, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.1 * np.random.default_rng(0).standard_normal(int(seconds * rate))).astype("float32"), rate)
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _misuse(r, *words):
    """Exit non-zero with one error line naming ``words`` (and no traceback)."""
    assert r.exit_code not in (0, None) and r.exception is None or isinstance(r.exception, SystemExit), r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def a_wav(tmp_path):
    return _wav(tmp_path / "in" / "a.wav")


@pytest.mark.parametrize("args, words", [
    (["--codebooks", "0"], ["--codebooks", "0"]),
    (["--codebooks", "2"], ["--codebooks 2", "has 1 codebooks"]),
    (["--batch-size", "0"], ["--batch-size", "0"]),
    (["--model", "no-such-model"], ["--model no-such-model", "no built-in model"]),
    (["--device", "warp9"], ["--device", "warp9"]),
])
def test_bad_encode_options(tmp_path, a_wav, args, words):
    out = tmp_path / "out"
    model = [] if "--model" in args else ["--model", "mulaw-16k"]
    r = run("encode", a_wav, "-o", out, "--quiet", *model, *args)
    _misuse(r, *words)
    assert not out.exists()


def test_cuda_without_a_gpu(tmp_path, a_wav):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    _misuse(run("encode", a_wav, "-o", out, "--model", "mulaw-16k", "--device", "cuda"),
            "--device cuda", "no such CUDA")
    assert not out.exists()


def test_model_load_errors_are_one_line(tmp_path, a_wav):
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / "config.json").write_text('{"format": "speechtok.model", "format_version": 1, "kind": "warp"')
    _misuse(run("encode", a_wav, "-o", tmp_path / "out", "--model", bad), "config.json")
    _misuse(run("decode", a_wav, "-o", tmp_path / "out", "--model", bad), "config.json")
    assert not (tmp_path / "out").exists()


def test_output_equal_to_an_input(tmp_path, a_wav):
    before = a_wav.read_bytes()
    _misuse(run("encode", a_wav, "-o", a_wav, "--model", "mulaw-16k"), "-o", "a.wav", "one of the inputs")
    _misuse(run("encode", a_wav.parent, "-o", a_wav.parent, "--model", "mulaw-16k"), "one of the inputs")
    assert a_wav.read_bytes() == before and sorted(p.name for p in a_wav.parent.iterdir()) == ["a.wav"]
    assert run("encode", a_wav, "-o", tmp_path / "a.stok", "--model", "mulaw-16k", "--quiet").exit_code == 0
    stok = (tmp_path / "a.stok").read_bytes()
    _misuse(run("decode", tmp_path / "a.stok", "-o", tmp_path / "a.stok"), "one of the inputs")
    assert (tmp_path / "a.stok").read_bytes() == stok


def test_output_is_an_existing_file(tmp_path, a_wav):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    _misuse(run("encode", a_wav, "-o", f, "--model", "mulaw-16k"), "notes.txt", "not a directory")
    _misuse(run("encode", a_wav.parent, "-o", f, "--model", "mulaw-16k"), "notes.txt", "not a directory")
    assert f.read_text() == "mine"


def test_two_inputs_one_output_name(tmp_path):
    a = _wav(tmp_path / "x" / "song.wav")
    b = _wav(tmp_path / "y" / "song.flac")
    out = tmp_path / "out"
    _misuse(run("encode", a, b, "-o", out, "--model", "mulaw-16k"), "song.wav", "song.flac", "song.stok")
    assert not out.exists()


def test_decode_bad_format(tmp_path, a_wav):
    assert run("encode", a_wav, "-o", tmp_path / "a.stok", "--model", "mulaw-16k", "--quiet").exit_code == 0
    _misuse(run("decode", tmp_path / "a.stok", "-o", tmp_path / "o", "--format", "xyz", "--quiet"), "--format", "xyz")
    assert not (tmp_path / "o").exists()


def test_rerun_reports_what_it_redoes(tmp_path, a_wav):
    out = tmp_path / "out"
    assert run("encode", a_wav, "-o", out, "--model", "mulaw-16k", "--quiet").exit_code == 0
    (out / "a.stok").write_bytes(b"")
    r = run("encode", a_wav, "-o", out, "--model", "mulaw-16k", "--quiet")
    assert r.exit_code == 0 and "a.stok: not a speechtok codes file" in r.stderr and "redone 1 stale" in r.stderr


def test_decode_match_source_option(tmp_path):
    p = _wav(tmp_path / "s.wav", seconds=0.2, rate=8000)
    assert run("encode", p, "-o", tmp_path / "s.stok", "--model", "mulaw-16k", "--quiet").exit_code == 0
    assert run("decode", tmp_path / "s.stok", "-o", tmp_path / "d.wav", "--quiet").exit_code == 0
    assert sf.info(str(tmp_path / "d.wav")).samplerate == 16000
    r = run("decode", tmp_path / "s.stok", "-o", tmp_path / "o.wav", "--quiet", "--match-source")
    assert r.exit_code == 0, r.output
    info = sf.info(str(tmp_path / "o.wav"))
    assert (info.samplerate, info.channels, info.frames) == (8000, 1, 1600)


def test_info_escapes_file_supplied_text(tmp_path, a_wav):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    p = tmp_path / "a.stok"
    assert run("encode", a_wav, "-o", p, "--model", "mulaw-16k", "--quiet").exit_code == 0
    with safe_open(str(p), framework="pt") as f:
        meta = json.loads(f.metadata()["speechtok"])
    meta.update(source="\x1b]0;pwned\x07\x1b[2J", speechtok_version="1\x1b[31m", model_id="m\x1b[5m@1")
    save_file(load_file(str(p)), str(p), metadata={"speechtok": json.dumps(meta)})
    r = run("info", p)
    assert r.exit_code == 0 and "\x1b" not in r.output and "\x07" not in r.output
    assert "\\x1b]0;pwned" in r.output
    r = run("decode", p, "-o", tmp_path / "o.wav")  # the error quotes the model id: escaped too
    assert r.exit_code == 1 and "\x1b" not in r.output
