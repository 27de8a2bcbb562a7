"""Offline codec tokenizer: padded batches == per item, windowed long inputs == one pass,
save/load, presets, training forward."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import speechtok
from speechtok.codec import CodecTokenizer, build_codec, config_from_dict, preset


pytestmark = pytest.mark.usefixtures("one_thread")


def _audio(B: int, S: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(S) / 8000
    return (0.4 * torch.sin(2 * torch.pi * 150 * t) + 0.3 * torch.randn(B, 1, S, generator=g)).float()


@pytest.fixture(scope="module")
def tok():
    tok = CodecTokenizer.from_config(preset("tiny"), seed=0)
    tok.model.train()
    with torch.no_grad():
        tok.model(_audio(4, tok.hop_length * 40, seed=99))  # k-means initialises the codebooks
    tok.model.eval()
    return tok


def test_batched_with_padding_equals_per_item(tok):
    hop = tok.hop_length
    lengths = [hop * 13 + 7, hop * 4, 1, hop * 9]
    items = [_audio(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    batch = torch.zeros(len(items), 1, max(lengths))
    for i, x in enumerate(items):
        batch[i, :, : x.shape[-1]] = x
    batch[1, :, lengths[1]:] = 5.0  # garbage past the length must not matter
    codes = tok.encode(batch, sample_rate=tok.sample_rate, lengths=torch.tensor(lengths))
    assert codes.lengths.tolist() == [14, 4, 1, 9]  # ceil(len / hop)
    assert codes.audio_lengths.tolist() == lengths
    wav = tok.decode(codes)
    assert wav.lengths.tolist() == lengths
    for i, x in enumerate(items):
        one = tok.encode(x, sample_rate=tok.sample_rate)
        n = int(codes.lengths[i])
        assert torch.equal(codes.codes[i, :, :n], one.codes[0])
        assert (codes.codes[i, :, n:] == -1).all()
        one_wav = tok.decode(one)
        torch.testing.assert_close(wav.audio[i, :, : lengths[i]], one_wav.audio[0], rtol=0, atol=1e-5)
        assert (wav.audio[i, :, lengths[i]:] == 0).all()


def test_windowed_long_input_equals_single_pass(tok):
    # 3 frames per window (tiny preset) and a 5-frame attention window: 40 frames cross both.
    x = _audio(2, tok.hop_length * 40)
    codes = tok.encode(x, sample_rate=tok.sample_rate).codes
    with torch.inference_mode():
        assert torch.equal(codes, tok.model.encode(x))  # one call on a fresh state
        one_pass = tok.model.decode(codes)
    torch.testing.assert_close(tok.decode(tok.encode(x, sample_rate=tok.sample_rate)).audio, one_pass,
                               rtol=0, atol=1e-5)


def test_window_size_does_not_change_codes(tok):
    x = _audio(1, tok.hop_length * 25 + 3)
    ref = tok.encode(x, sample_rate=tok.sample_rate).codes
    for w in (1, 7, 1000):
        other = CodecTokenizer(tok.model, name=tok.name, weights_hash=tok.weights_hash)
        other.cfg = dataclasses.replace(tok.cfg, window_frames=w)
        assert torch.equal(other.encode(x, sample_rate=tok.sample_rate).codes, ref)


def test_zero_length_and_one_sample_inputs(tok):
    empty = tok.encode(torch.zeros(1, 1, 0), sample_rate=tok.sample_rate)
    assert empty.codes.shape == (1, tok.num_codebooks, 0)
    assert tok.decode(empty).audio.shape == (1, 1, 0)
    one = tok.encode(torch.full((1, 1, 1), 0.5), sample_rate=tok.sample_rate)
    assert one.codes.shape == (1, tok.num_codebooks, 1) and one.validate()
    assert tok.decode(one).audio.shape == (1, 1, 1)


def test_save_load_round_trip(tok, tmp_path):
    x = _audio(1, tok.hop_length * 10)
    codes = tok.encode(x, sample_rate=tok.sample_rate)
    tok.save(tmp_path / "m")
    back = speechtok.load(tmp_path / "m")
    assert isinstance(back, CodecTokenizer)
    assert back.model_id == tok.model_id and back.cfg == tok.cfg
    assert torch.equal(back.encode(x, sample_rate=tok.sample_rate).codes, codes.codes)
    torch.testing.assert_close(back.decode(codes).audio, tok.decode(codes).audio, rtol=0, atol=0)
    other = CodecTokenizer.from_config(preset("tiny"), seed=1)
    assert other.model_id != tok.model_id
    with pytest.raises(speechtok.CodesError, match="decode them with the model"):
        other.decode(codes)


def test_encoder_only_load_skips_decoder_weights(tok, tmp_path):
    """``encoder_only`` leaves the decoder on the meta device (no memory), keeps model_id and codes,
    still checks the decoder's stored shapes, and refuses to decode or save."""
    from speechtok.registry import ModelLoadError, save_model_dir

    x = _audio(2, tok.hop_length * 12)
    codes = tok.encode(x, sample_rate=tok.sample_rate)
    tok.save(tmp_path / "m")
    enc = speechtok.load(tmp_path / "m", encoder_only=True)
    assert enc.model_id == tok.model_id and not enc.can_decode and tok.can_decode
    meta = [n for n, p in enc.model.named_parameters() if p.is_meta]
    assert meta and all(n.split(".")[0] in ("decoder", "decoder_transformer", "upsample") for n in meta)
    assert not any(p.is_meta for p in enc.model.encoder.parameters())
    freed = [n for n, b in enc.model.quantizer.named_buffers() if b.is_meta]  # EMA sums behind frozen tables
    assert freed and all(n.endswith(("embed_sum", "cluster_usage")) for n in freed)
    assert torch.equal(enc.encode(x, sample_rate=tok.sample_rate).codes, codes.codes)
    with pytest.raises(RuntimeError, match="encoding only"):
        enc.decode(codes)
    with pytest.raises(RuntimeError, match="encoding only"):
        enc.save(tmp_path / "again")
    sd = tok.model.state_dict()
    sd["decoder.layers.0.conv.weight"] = sd["decoder.layers.0.conv.weight"][:1]
    save_model_dir(tmp_path / "bad", kind="codec", name="tiny", config=tok.cfg.to_dict(), state_dict=sd)
    with pytest.raises(ModelLoadError, match="does not fit"):
        speechtok.load(tmp_path / "bad", encoder_only=True)


def test_load_rejects_weights_that_do_not_fit(tok, tmp_path):
    from speechtok.registry import ModelLoadError, save_model_dir

    sd = tok.model.state_dict()
    sd.pop("encoder.layers.0.conv.weight")
    save_model_dir(tmp_path / "bad", kind="codec", name="tiny", config=tok.cfg.to_dict(), state_dict=sd)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        speechtok.load(tmp_path / "bad")


def test_resampling_and_stereo_input(tok):
    x = _audio(1, 1600)[0].repeat(2, 1)  # [2, S] stereo at 16 kHz
    codes = tok.encode(x, sample_rate=16000)
    assert codes.num_frames == 50 and codes.sample_rate == 8000
    mono = tok.encode(torchaudio_resample(x[:1], 16000, 8000), sample_rate=8000)
    assert torch.equal(codes.codes, mono.codes)


def torchaudio_resample(x, sr, new):
    import torchaudio.functional as AF

    return AF.resample(x, sr, new)


def test_presets_and_config_round_trip():
    mimi = preset("mimi")
    assert (mimi.sample_rate, mimi.frame_rate, mimi.hop_length) == (24000, 12.5, 1920)
    assert (mimi.quantizer.n_q, mimi.quantizer.n_semantic, mimi.quantizer.codebook_size) == (32, 1, 2048)
    assert preset("speechtok-16k-12.5hz").frame_rate == 12.5
    assert preset("speechtok-16k-25hz").frame_rate == 25.0
    for name in ("mimi", "speechtok-16k-25hz", "tiny"):
        cfg = preset(name)
        assert config_from_dict(cfg.to_dict()) == cfg
    small = config_from_dict({"preset": "speechtok-16k-12.5hz", "quantizer": {"n_q": 4}})
    assert small.quantizer.n_q == 4 and small.quantizer.codebook_size == 1024
    with pytest.raises(KeyError, match="presets"):
        preset("nope")
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict({"preset": "tiny", "seanet": {"bogus": 1}})


def test_training_forward_returns_dataclass_with_gradients():
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = build_codec(cfg).train()
    x = _audio(2, cfg.hop_length * 12)
    out = model(x, lengths=torch.tensor([cfg.hop_length * 12, cfg.hop_length * 5]))
    assert out.x.shape == x.shape and out.codes.shape == (2, cfg.quantizer.n_q, 12)
    assert out.semantic is not None and out.semantic.shape == (2, cfg.seanet.dimension, 12)
    assert out.mask[1].sum() == 5
    loss = (out.x - x).pow(2).mean() + out.penalty
    loss.backward()
    assert model.encoder.layers[0].conv.weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    with pytest.raises(ValueError, match="multiple of the hop"):
        model(x[..., :-1])
