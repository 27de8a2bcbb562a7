"""Hostile and careless input to the codec: long files streamed from disk give bitwise the codes of
whole-file encoding (the model sees the same pieces), and codec configs read from files are checked
for type and range before anything is built (one-line errors naming the file and the key)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import speechtok
from speechtok import audio as audio_mod
from speechtok.audio import iter_audio_blocks, load_audio, resample
from speechtok.codec import CodecTokenizer, config_from_dict
from speechtok.codec.mimi_import import MimiImportError
from speechtok.registry import ModelLoadError

BUILTIN = Path(speechtok.__file__).parent / "models" / "speechtok-16k-50hz"


@pytest.fixture(scope="module")
def tok():
    """A tiny trained-ish codec at 16 kHz (hop 16, windows of 64 frames = 1024 samples)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = CodecTokenizer.from_config(config_from_dict({"preset": "tiny", "sample_rate": 16000,
                                                       "window_frames": 64}), seed=0)
    tok.model.train()
    with torch.no_grad():  # k-means initialises the codebooks
        tok.model(torch.randn(4, 1, tok.hop_length * 40, generator=torch.Generator().manual_seed(0)) * 0.3)
    tok.model.eval()
    yield tok
    torch.set_num_threads(n)


def _write(path, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> Path:
    """Speech-like test audio: a gliding tone, gated on and off, plus noise; not a whole number of frames."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate) + 7) / rate
    x = 0.3 * np.sin(2 * np.pi * (150 + 50 * np.sin(t)) * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    x = x[:, None] + 0.05 * rng.standard_normal((t.size, channels))
    sf.write(str(path), x.astype(np.float32), rate, subtype="FLOAT")
    return path


def _model_calls(tok, fn):
    """Run ``fn()`` recording the input shape of every ``tok.model.encode`` call."""
    shapes, real = [], tok.model.encode

    def spy(x, *a, **kw):
        shapes.append(tuple(x.shape))
        return real(x, *a, **kw)

    tok.model.encode = spy
    try:
        return fn(), shapes
    finally:
        del tok.model.encode


# ---------------------------------------------------------------------- long-file exactness
@pytest.mark.parametrize("rate,segment", [(16000, None), (22050, 0.5), (22050, None), (44100, 0.5)])
def test_encode_file_runs_the_offline_pieces_and_equals_whole_file_encode(tok, tmp_path, monkeypatch,
                                                                          rate, segment):
    if segment is not None:  # resampling segments shorter than the file: several of them
        monkeypatch.setattr(audio_mod, "RESAMPLE_SEGMENT_SECONDS", segment)
    seconds = 3.3 if segment is not None or rate == tok.sample_rate else 12.5  # > one 10 s segment
    path = _write(tmp_path / "long.wav", seconds, rate)
    wav, _ = load_audio(path, sample_rate=tok.sample_rate)
    ref, ref_calls = _model_calls(tok, lambda: tok.encode(wav[None]))
    got, got_calls = _model_calls(tok, lambda: tok.encode_file(path, block_seconds=0.37))
    assert len(got_calls) > 10 and got_calls == ref_calls  # same pieces, same shapes: exact by construction
    assert torch.equal(got.codes, ref.codes)
    assert torch.equal(got.audio_lengths, ref.audio_lengths) and torch.equal(got.lengths, ref.lengths)
    assert torch.equal(tok.encode_file(path, num_codebooks=2, block_seconds=1.1).codes, ref.codes[:, :2])


@pytest.mark.parametrize("orig,new", [(22050, 16000), (44100, 16000), (16000, 24000), (8000, 16000)])
@pytest.mark.parametrize("mono", [True, False])
def test_block_resampling_equals_whole_file_resampling_bitwise(tmp_path, monkeypatch, orig, new, mono):
    monkeypatch.setattr(audio_mod, "RESAMPLE_SEGMENT_SECONDS", 0.4)
    path = _write(tmp_path / "x.wav", 2.3, orig, channels=2, seed=3)
    ref = load_audio(path, new, mono=mono)[0]
    for block_seconds in (0.05, 0.37, 1.0, 5.0):
        blocks = list(iter_audio_blocks(path, new, mono=mono, block_seconds=block_seconds))
        assert all(b.shape[-1] > 0 and b.is_contiguous() for b in blocks)
        assert torch.equal(torch.cat(blocks, dim=-1), ref)
    # the segmented resampling is torchaudio's up to float rounding, with its length
    import torchaudio.functional as AF

    raw = torch.from_numpy(sf.read(str(path), dtype="float32", always_2d=True)[0].T.copy())
    raw = raw.mean(dim=0, keepdim=True) if mono else raw
    plain = AF.resample(raw, orig, new)
    assert plain.shape == ref.shape and torch.equal(resample(raw, orig, new), ref)
    torch.testing.assert_close(ref, plain, atol=1e-6, rtol=0)


def test_resampled_lengths_at_segment_edges(tmp_path):
    o, n, seg, m = audio_mod._resample_plan(22050, 16000)
    for length in (seg - 1, seg, seg + 1, 2 * seg, seg + m + 3):
        x = torch.randn(1, length, generator=torch.Generator().manual_seed(length)) * 0.1
        path = tmp_path / f"{length}.wav"
        sf.write(str(path), x[0].numpy(), 22050, subtype="FLOAT")
        ref = load_audio(path, 16000)[0]
        assert ref.shape[-1] == audio_mod._resampled_length(length, o, n)
        assert torch.equal(torch.cat(list(iter_audio_blocks(path, 16000, block_seconds=3.7)), -1), ref)


def test_builtin_model_long_file_is_exact(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = speechtok.load("speechtok-16k-50hz", encoder_only=True)
        path = _write(tmp_path / "talk.wav", 180.0, 22050, seed=5)  # 3 min, resampled to 16 kHz
        wav, _ = load_audio(path, sample_rate=tok.sample_rate)
        ref, ref_calls = _model_calls(tok, lambda: tok.encode(wav[None]))
        got, got_calls = _model_calls(tok, lambda: tok.encode_file(path, block_seconds=7.3))
    finally:
        torch.set_num_threads(n)
    assert got_calls == ref_calls and len(ref_calls) > 200
    assert torch.equal(got.codes, ref.codes)


# ---------------------------------------------------------------------- hostile codec configs
def _model_dir(tmp_path: Path, edit) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(BUILTIN / "model.safetensors", d / "model.safetensors")
    meta = json.loads((BUILTIN / "config.json").read_text())
    edit(meta["config"])
    (d / "config.json").write_text(json.dumps(meta))
    return d


def _set(key: str, value):
    def edit(cfg):
        *sections, last = key.split(".")
        for s in sections:
            cfg = cfg[s]
        cfg[last] = value
    return edit


@pytest.fixture
def no_build(monkeypatch):
    """Building a codec fails the test: a bad config must be refused before anything is allocated."""
    import speechtok.codec.tokenizer as tk

    def refuse(*a, **kw):
        raise AssertionError("build_codec reached with a hostile config")

    monkeypatch.setattr(tk, "build_codec", refuse)


HOSTILE = [
    ("transformer.num_layers", 1e6, "transformer.num_layers"),
    ("transformer.num_layers", 10 ** 6, "transformer.num_layers"),
    ("transformer.num_layers", -1, "transformer.num_layers"),
    ("transformer.num_heads", 3, "transformer.num_heads"),
    ("transformer.dim_feedforward", "512", "transformer.dim_feedforward"),
    ("transformer.context", 10 ** 9, "transformer.context"),
    ("transformer.context", 0, "transformer.context"),
    ("transformer.layer_scale", "big", "transformer.layer_scale"),
    ("transformer.norm_eps", float("nan"), "transformer.norm_eps"),
    ("transformer.max_period", True, "transformer.max_period"),
    ("transformer.d_model", 256, "d_model"),
    ("seanet.dimension", 0, "seanet.dimension"),
    ("seanet.n_filters", -16, "seanet.n_filters"),
    ("seanet.n_filters", 4096, "seanet.n_filters"),
    ("seanet.ratios", [8, 5, 10 ** 9], r"seanet.ratios\[2\]"),
    ("seanet.ratios", [8, 5.0, 4], r"seanet.ratios\[1\]"),
    ("seanet.ratios", "854", "seanet.ratios"),
    ("seanet.ratios", [], "seanet.ratios"),
    ("seanet.kernel_size", 10 ** 6, "seanet.kernel_size"),
    ("seanet.channels", 0, "seanet.channels"),
    ("seanet.pad_mode", "reflect", "seanet.pad_mode"),
    ("seanet.true_skip", "yes", "seanet.true_skip"),
    ("seanet.bogus", 1, "bogus"),
    ("quantizer.codebook_size", 2 ** 40, "quantizer.codebook_size"),
    ("quantizer.codebook_size", 0, "quantizer.codebook_size"),
    ("quantizer.n_q", 0, "quantizer.n_q"),
    ("quantizer.n_q", 10 ** 5, "quantizer.n_q"),
    ("quantizer.codebook_dim", 1e3, "quantizer.codebook_dim"),
    ("quantizer.lookup", "cosine", "quantizer.lookup"),
    ("quantizer.codebook_size", 2 ** 22, "floats"),  # each value allowed, the whole too big
    ("sample_rate", 0, "sample_rate"),
    ("sample_rate", 10 ** 9, "sample_rate"),
    ("sample_rate", "16000", "sample_rate"),
    ("frame_stride", 0, "frame_stride"),
    ("window_frames", 10 ** 7, "window_frames"),
    ("window_frames", -3, "window_frames"),
    ("upsample_groups", 7, "upsample_groups"),
    ("name", 5, "name"),
    ("bogus", 1, "bogus"),
    ("quantizer", [1, 2], "quantizer"),
    ("preset", ["tiny"], "preset"),
]


@pytest.mark.parametrize("key,value,named", HOSTILE, ids=[f"{k}={v!r}"[:40] for k, v, _ in HOSTILE])
def test_hostile_codec_config_is_refused_before_building(tmp_path, no_build, key, value, named):
    d = _model_dir(tmp_path, _set(key, value))
    with pytest.raises(ModelLoadError, match=named) as e:
        speechtok.load(d)
    msg = str(e.value)
    assert str(d / "config.json") in msg and "\n" not in msg


def test_valid_copy_of_the_builtin_config_still_loads(tmp_path):
    d = _model_dir(tmp_path, lambda cfg: None)
    assert speechtok.load(d, encoder_only=True).frame_rate == 50.0


HOSTILE_MIMI = [
    ("num_hidden_layers", 1e6, "num_hidden_layers"),
    ("num_hidden_layers", 10 ** 6, "num_hidden_layers"),
    ("hidden_size", -512, "hidden_size"),
    ("num_attention_heads", 0, "num_attention_heads"),
    ("upsampling_ratios", [8, "6", 5, 4], "upsampling_ratios"),
    ("upsampling_ratios", [8, 6, 5, 10 ** 9], "upsampling_ratios"),
    ("sampling_rate", 0, "sampling_rate"),
    ("sampling_rate", 24000.5, "sampling_rate"),
    ("codebook_size", 2 ** 30, "codebook_size"),
    ("num_quantizers", 0, "num_quantizers"),
    ("frame_rate", 0, "frame_rate"),
    ("rope_theta", "abc", "rope_theta"),
    ("sliding_window", 10 ** 9, "sliding_window"),
    ("intermediate_size", None, "intermediate_size"),
    ("num_filters", 10 ** 5, "num_filters"),
]


@pytest.mark.parametrize("key,value,named", HOSTILE_MIMI, ids=[f"{k}={v!r}"[:40] for k, v, _ in HOSTILE_MIMI])
def test_hostile_hf_mimi_config_is_refused_before_building(tmp_path, no_build, key, value, named):
    d = tmp_path / "kyutai-mimi"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "mimi", "transformers_version": "4.0", key: value}))
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(MimiImportError, match=named) as e:
        speechtok.load(d)
    msg = str(e.value)
    assert str(d / "config.json") in msg and "\n" not in msg


def test_hf_mimi_config_not_json(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "mimi", "num_hidden_layers": ')
    with pytest.raises((MimiImportError, ModelLoadError), match="config.json"):
        speechtok.load(d)
