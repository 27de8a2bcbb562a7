"""Long files: `CodecTokenizer.encode_file` and `encode_files` stream a file from disk in blocks
and give the codes of whole-file encoding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtok.audio import load_audio
from speechtok.codec import CodecTokenizer, preset
from speechtok.codesfile import load_codes
from speechtok.files import encode_files


@pytest.fixture(scope="module")
def tok():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = CodecTokenizer.from_config(preset("tiny"), seed=0)
    tok.model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        tok.model(torch.randn(4, 1, tok.hop_length * 40, generator=g) * 0.3)  # k-means initialises the codebooks
    tok.model.eval()
    yield tok
    torch.set_num_threads(n)


def _write(path, seconds: float, rate: int, channels: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 170 * t)[:, None] + 0.1 * rng.standard_normal((t.size, channels))
    sf.write(str(path), x.astype(np.float32), rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("rate,channels", [(None, 1), (11025, 1), (22050, 2)])
def test_encode_file_equals_whole_file_encode(tok, tmp_path, rate, channels):
    rate = rate or tok.sample_rate
    path = _write(tmp_path / "a.wav", 2.0 + 3 / rate, rate, channels)  # not a whole number of frames
    wav, _ = load_audio(path, sample_rate=tok.sample_rate)
    ref = tok.encode(wav[None], sample_rate=tok.sample_rate)
    got = tok.encode_file(path, block_seconds=0.13)  # many blocks, not aligned to frames
    assert torch.equal(got.codes, ref.codes)
    assert torch.equal(got.lengths, ref.lengths) and torch.equal(got.audio_lengths, ref.audio_lengths)
    assert got.model_id == ref.model_id
    assert torch.equal(tok.encode_file(path, num_codebooks=2).codes, ref.codes[:, :2])


def test_encode_files_streams_long_files_with_the_same_codes(tok, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "long.wav", 3.0, 16000, seed=1)  # streamed below (> long_file_seconds)
    _write(tmp_path / "in" / "short.wav", 0.4, tok.sample_rate, seed=2)  # batched either way
    whole = encode_files([tmp_path / "in"], tmp_path / "whole", tok, progress=False)
    calls = []
    real = tok.encode_file
    monkeypatch.setattr(tok, "encode_file", lambda path, **kw: calls.append(path) or real(path, **kw))
    streamed = encode_files([tmp_path / "in"], tmp_path / "streamed", tok, progress=False, long_file_seconds=1.0)
    assert whole.ok and streamed.ok and len(streamed.written) == 2
    assert [Path(p).name for p in calls] == ["long.wav"]  # only the long file streamed
    for name in ("long.stok", "short.stok"):
        x, y = load_codes(tmp_path / "whole" / name), load_codes(tmp_path / "streamed" / name)
        assert torch.equal(x.codes, y.codes) and torch.equal(x.audio_lengths, y.audio_lengths)


def test_encode_file_errors_name_the_file(tok, tmp_path):
    from speechtok.audio import AudioError

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match="bad.wav"):
        tok.encode_file(bad)
    report = encode_files([bad], tmp_path / "out", tok, progress=False, long_file_seconds=0.0)
    assert not report.ok and "bad.wav" in report.failed[0][0].name
