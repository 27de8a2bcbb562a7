"""Semantic distillation: time alignment, cosine losses, the head, and every teacher kind
(tiny random HuBERT/WavLM through torchaudio, a tiny random Whisper converted to ctranslate2,
the feature cache, the random projection teacher)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechtok.codec.distill import DistillHead, TeacherFeatures, align_features, distill_loss
from speechtok.codec.teachers import build_teacher
from speechtok.codec.teachers.projection import ProjectionTeacher
from speechtok.codec.train.config import TeacherConfig


def _ramp(B=2, T=20, rate=50.0, start=0.0):
    """Features whose value is the time (s) of the frame centre, in every dimension."""
    t = (torch.arange(T, dtype=torch.float32) + 0.5) / rate + start
    feats = t[None, :, None].expand(B, T, 3).clone()
    return TeacherFeatures(feats, rate, torch.full((B,), start, dtype=torch.float64), torch.full((B,), T))


def test_align_features_interpolates_in_time():
    same, valid = align_features(_ramp(), 20, 50.0)
    assert torch.allclose(same, _ramp().features) and valid.all()
    # 12.5 Hz token grid: frame t is centred at (t + 0.5) / 12.5 s
    coarse, valid = align_features(_ramp(), 5, 12.5)
    assert torch.allclose(coarse[0, :, 0], (torch.arange(5) + 0.5) / 12.5, atol=1e-6)
    # a teacher whose frame 0 starts 0.1 s before the crop: same times come out
    shifted, valid = align_features(_ramp(T=25, start=-0.1), 5, 12.5)
    assert torch.allclose(shifted[0, :, 0], (torch.arange(5) + 0.5) / 12.5, atol=1e-6)
    # frames past the teacher's valid length are masked
    short = _ramp()
    short = TeacherFeatures(short.features, 50.0, short.start, torch.tensor([20, 10]))
    _, valid = align_features(short, 5, 12.5)
    assert valid[0].all() and valid[1].tolist() == [True, True, False, False, False]


def test_cosine_losses():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 4)
    m = torch.ones(2, 6, dtype=torch.bool)
    assert float(distill_loss(x, x, m)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(3 * x, x, m)) == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert float(distill_loss(-x, x, m)) == pytest.approx(2.0, abs=1e-5)
    noisy = x.clone()
    noisy[:, 3:] = torch.randn(2, 3, 4)
    m2 = m.clone()
    m2[:, 3:] = False
    assert float(distill_loss(noisy, x, m2)) == pytest.approx(0.0, abs=1e-6)  # masked frames ignored
    assert float(distill_loss(noisy, x, m)) > 0.1
    same, other = distill_loss(x, x, m, "dim_cosine"), distill_loss(torch.randn(2, 6, 4), x, m, "dim_cosine")
    assert float(same) == pytest.approx(-np.log(1 / (1 + np.exp(-1))), abs=1e-5) and float(other) > float(same)
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distill_loss(x, x, m, "l2")


def test_head_learns_a_linear_teacher():
    torch.manual_seed(0)
    latent = torch.randn(4, 10, 6)
    target = latent @ torch.randn(6, 5)
    tf = TeacherFeatures(target, 12.5, torch.zeros(4, dtype=torch.float64), torch.full((4,), 10))
    head = DistillHead(in_dim=6, teacher_dim=5)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = float(head.loss(latent, tf, 12.5))
    for _ in range(150):
        opt.zero_grad()
        loss = head.loss(latent, tf, 12.5)
        loss.backward()
        opt.step()
    assert float(loss) < 0.02 < first


def test_projection_teacher_is_deterministic_and_audio_dependent():
    t = ProjectionTeacher(dim=8, frame_rate=50.0)
    x = torch.randn(2, 1, 8000) * 0.1
    a = t(x, torch.tensor([8000, 4000]), 8000)
    assert a.features.shape == (2, 51, 8)  # 1 s at 50 Hz (+1 centred frame)
    assert a.lengths.tolist() == [50, 25]
    b = ProjectionTeacher(dim=8, frame_rate=50.0)(x, torch.tensor([8000, 4000]), 8000)
    assert torch.equal(a.features, b.features)
    c = t(x * 0 + 0.3 * torch.sin(torch.arange(8000) / 3.0), torch.tensor([8000, 8000]), 8000)
    assert not torch.allclose(a.features[0], c.features[0])


# ---------------------------------------------------------------------------- SSL teachers
def _tiny_ssl(tmp_path, kind: str):
    transformers = pytest.importorskip("transformers")
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                  hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  layerdrop=0.0)
    torch.manual_seed(0)
    if kind == "hubert":
        model = transformers.HubertModel(transformers.HubertConfig(**common))
    else:
        model = transformers.WavLMModel(transformers.WavLMConfig(**common, num_buckets=8, max_bucket_distance=32))
    model.eval()
    path = tmp_path / kind
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
def test_ssl_teacher_equals_transformers_hidden_state(tmp_path, kind):
    hf, path = _tiny_ssl(tmp_path, kind)
    teacher = build_teacher(TeacherConfig(kind="hf", path=str(path), layer=1))
    assert teacher.dim == 32 and teacher.frame_rate == 50.0
    torch.manual_seed(1)
    wav = torch.randn(1, 1, 8000) * 0.1
    got = teacher(wav, torch.tensor([8000]), 16000)
    with torch.no_grad():
        ref = hf(wav[:, 0], output_hidden_states=True).hidden_states[1]
    assert got.features.shape == ref.shape
    assert torch.allclose(got.features, ref, atol=1e-4), (got.features - ref).abs().max()
    assert int(got.lengths[0]) == ref.shape[1]


def test_fairseq_checkpoints_need_trust_pickle(tmp_path):
    p = tmp_path / "hubert_base_ls960.pt"
    p.write_bytes(b"not really a checkpoint")
    with pytest.raises(ValueError, match="trust_pickle"):
        build_teacher(TeacherConfig(kind="fairseq", path=str(p)))
    with pytest.raises(ValueError, match="no config.json"):
        build_teacher(TeacherConfig(kind="hf", path=str(tmp_path)))
    with pytest.raises(ValueError, match="valid kinds"):
        build_teacher(TeacherConfig(kind="hubert-xl", path=str(tmp_path)))


# ---------------------------------------------------------------------------- Whisper
def test_whisper_teacher_equals_reference_encoder(tmp_path):
    transformers = pytest.importorskip("transformers")
    ctranslate2 = pytest.importorskip("ctranslate2")
    pytest.importorskip("faster_whisper")
    from faster_whisper.feature_extractor import FeatureExtractor

    from speechtok.codec.teachers.whisper import WhisperTeacher

    cfg = transformers.WhisperConfig(
        vocab_size=64, num_mel_bins=80, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=1500,
        max_target_positions=16, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        suppress_tokens=[], begin_suppress_tokens=[])
    torch.manual_seed(0)
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ctranslate2.converters.TransformersConverter(str(tmp_path / "hf")).convert(str(tmp_path / "ct2"), force=True)
    teacher = WhisperTeacher(str(tmp_path / "ct2"), threads=1)
    assert teacher.dim == 16
    torch.manual_seed(1)
    wav = torch.randn(2, 1, 16000) * 0.1
    got = teacher(wav, torch.tensor([16000, 8000]), 16000)
    assert got.features.shape == (2, 50, 16) and got.lengths.tolist() == [50, 25]
    mel = FeatureExtractor(feature_size=80)(np.pad(wav[0, 0].numpy(), (0, 16000 * 29)), padding=0)[:, :3000]
    with torch.no_grad():
        ref = hf.model.encoder(torch.from_numpy(mel)[None]).last_hidden_state[0, :50]
    assert torch.allclose(got.features[0], ref, atol=1e-3), (got.features[0] - ref).abs().max()
    # resampled input gives the same frame grid
    at8k = teacher(wav[:, :, ::2], torch.tensor([8000, 4000]), 8000)
    assert at8k.features.shape == (2, 50, 16)
    # inputs over 30 s are encoded window by window
    long = np.concatenate([np.tile(wav[0, 0].numpy(), 30), wav[1, 0, :8000].numpy()])
    states = teacher.encode_waveform(long)
    assert states.shape == (1525, 16)
    first = teacher.encode_waveform(long[: 30 * 16000])
    assert np.allclose(states[:1500], first, atol=1e-5)
    tail = teacher.encode_waveform(long[30 * 16000:])
    assert np.allclose(states[1500:], tail, atol=1e-5)


# ---------------------------------------------------------------------------- cache
def test_cached_features_serve_crops(tmp_path):
    import soundfile as sf

    from speechtok.codec.teachers.cached import CacheError, CachedTeacher, precompute_features
    from speechtok.codec.train.data import list_utterances

    rng = np.random.default_rng(0)
    for i, sr in enumerate((16000, 8000, 16000)):
        sf.write(tmp_path / f"u{i}.wav", (0.1 * rng.standard_normal(int(sr * 0.8))).astype(np.float32), sr)
    items = list_utterances([str(tmp_path)])
    teacher = ProjectionTeacher(dim=6, frame_rate=50.0)
    cache = precompute_features(teacher, items, str(tmp_path / "cache"), shard_items=2)
    index = json.loads((cache / "index.json").read_text())
    assert sorted(index["items"]) == ["u0", "u1", "u2"] and len(list(cache.glob("shard-*.safetensors"))) == 2
    cached = build_teacher(TeacherConfig(kind="cached", path=str(cache)))
    assert isinstance(cached, CachedTeacher) and cached.dim == 6
    # a 0.3 s crop at 0.25 s of u0, tokens at 12.5 Hz
    import soundfile

    full, sr = soundfile.read(tmp_path / "u0.wav", dtype="float32")
    whole = teacher(torch.from_numpy(full)[None, None], torch.tensor([len(full)]), sr)
    off = 0.24
    crop = cached(torch.zeros(1, 1, 4800), torch.tensor([4800]), 16000, ids=["u0"], offsets=torch.tensor([off]))
    a, va = align_features(crop, 4, 12.5)
    ref = TeacherFeatures(whole.features, 50.0, whole.start - off, whole.lengths)
    b, vb = align_features(ref, 4, 12.5)
    assert va.all() and vb.all()
    assert torch.allclose(a, b, atol=2e-3)  # float16 storage
    with pytest.raises(CacheError, match="nope"):
        cached(torch.zeros(1, 1, 10), torch.tensor([10]), 16000, ids=["nope"], offsets=torch.tensor([0.0]))
    # rerunning skips what is cached
    mtime = (cache / "shard-00000.safetensors").stat().st_mtime_ns
    precompute_features(teacher, items, str(cache))
    assert (cache / "shard-00000.safetensors").stat().st_mtime_ns == mtime
