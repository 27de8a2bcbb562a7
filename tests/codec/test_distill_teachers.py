"""Semantic distillation: time alignment, cosine losses, the head, and every teacher kind
(`ExtractorTeacher` over tiny random HuBERT/WavLM and MFCC extractors, a tiny random Whisper,
the feature cache, the random projection teacher). ``test_whisper_*`` need the PyTorch Whisper
extractor (``speechtok.units.features.whisper`` with ``load``/``restore``) and skip until it lands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechtok.codec.distill import DistillHead, TeacherFeatures, align_features, distill_loss
from speechtok.codec.teachers import TEACHER_KINDS, build_teacher
from speechtok.codec.teachers.extractor import ExtractorTeacher
from speechtok.codec.teachers.projection import ProjectionTeacher
from speechtok.codec.train.config import TeacherConfig
from speechtok.units.features import EXTRACTORS, FeatureError, Features, FeatureSpec, extractor_class


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


def test_standardized_targets_take_the_constant_away():
    """Teacher states with a large shared direction: predicting that constant wins a raw frame
    cosine but scores ~1 (cosine 0) against per-utterance standardized targets, where the
    standardized content itself scores 0. Padded frames neither count nor enter the statistics."""
    from speechtok.codec.distill import standardize

    torch.manual_seed(0)
    content = torch.randn(2, 40, 8)
    offset = 4.0 * torch.randn(1, 1, 8)
    target = content + offset
    m = torch.ones(2, 40, dtype=torch.bool)
    constant = offset.expand_as(target)
    assert float(distill_loss(constant, target, m)) < 0.1
    assert float(distill_loss(constant, target, m, target_norm="utterance")) == pytest.approx(1.0, abs=0.1)
    z = standardize(target, m)
    torch.testing.assert_close(z.mean(1), torch.zeros(2, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(1, unbiased=False), torch.ones(2, 8), atol=1e-4, rtol=0)
    assert float(distill_loss(z, target, m, target_norm="utterance")) == pytest.approx(0.0, abs=1e-5)
    padded = torch.cat([target, 1e3 * torch.ones(2, 5, 8)], 1)
    mp = torch.cat([m, torch.zeros(2, 5, dtype=torch.bool)], 1)
    torch.testing.assert_close(standardize(padded, mp)[:, :40], z)
    with pytest.raises(ValueError, match="target_norm"):
        distill_loss(z, target, m, target_norm="global")


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
@pytest.mark.parametrize("via", ["hf", "kind"])
def test_ssl_teacher_equals_transformers_hidden_state(tmp_path, kind, via):
    hf, path = _tiny_ssl(tmp_path, kind)
    teacher = build_teacher(TeacherConfig(kind="hf" if via == "hf" else kind, path=str(path), layer=1))
    assert isinstance(teacher, ExtractorTeacher) and teacher.spec.kind == kind and teacher.spec.layer == 1
    assert teacher.dim == 32 and teacher.frame_rate == 50.0
    assert teacher.start_seconds == pytest.approx(200 / 16000 - 0.5 / 50)  # frame 0 centred at 12.5 ms
    torch.manual_seed(1)
    wav = torch.randn(1, 1, 8000) * 0.1
    got = teacher(wav, torch.tensor([8000]), 16000)
    with torch.no_grad():
        ref = hf(wav[:, 0], output_hidden_states=True).hidden_states[1]
    assert got.features.shape == ref.shape
    assert torch.allclose(got.features, ref, atol=1e-4), (got.features - ref).abs().max()
    assert int(got.lengths[0]) == ref.shape[1]
    assert torch.allclose(got.start, torch.full((1,), teacher.start_seconds, dtype=torch.float64))
    # layer None = the last block
    last = build_teacher(TeacherConfig(kind=kind, path=str(path)))
    assert last.spec.layer == hf.config.num_hidden_layers


def test_fairseq_checkpoints_need_trust_pickle(tmp_path):
    p = tmp_path / "hubert_base_ls960.pt"
    p.write_bytes(b"not really a checkpoint")
    with pytest.raises(ValueError, match="trust_pickle"):
        build_teacher(TeacherConfig(kind="fairseq", path=str(p)))
    with pytest.raises(ValueError, match="no config.json"):
        build_teacher(TeacherConfig(kind="hf", path=str(tmp_path)))
    with pytest.raises(ValueError, match="valid kinds"):
        build_teacher(TeacherConfig(kind="hubert-xl", path=str(tmp_path)))
    with pytest.raises(FeatureError, match="need a source"):
        build_teacher(TeacherConfig(kind="wavlm"))


def test_teacher_kinds_are_the_extractor_kinds_plus_four():
    assert set(TEACHER_KINDS) == set(EXTRACTORS) | {"hf", "fairseq", "cached", "random"}


# ---------------------------------------------------------------------------- alignment of extractor teachers
class _BoxExtractor:
    """Frames of ``win`` samples every ``hop``; each feature is the mean of its window's samples."""

    sample_rate = 16000

    def __init__(self, win: int, hop: int):
        self.win, self.hop = win, hop
        self.frame_offset_s = win / 2 / self.sample_rate
        self.spec = FeatureSpec(kind="box", layer=-1, frame_rate=self.sample_rate / hop, dim=1,
                                sample_rate=self.sample_rate, checkpoint_hash="none")

    def num_frames(self, n: int) -> int:
        return 0 if n < self.win else 1 + (n - self.win) // self.hop

    def extract(self, wav, lengths=None) -> Features:
        x = wav.mean(dim=1)
        lengths = torch.full((x.shape[0],), x.shape[-1]) if lengths is None else lengths
        frames = x.unfold(-1, self.win, self.hop).mean(-1)[..., None]  # [B, T, 1]
        n = torch.tensor([self.num_frames(int(v)) for v in lengths])
        return Features(frames, n, self.spec)

    def describe(self) -> dict:
        return {"type": "box", "config": {"win": self.win, "hop": self.hop}}

    def weights(self) -> dict:
        return {}


@pytest.mark.parametrize("win, hop", [(400, 320), (400, 160), (1024, 256)])
@pytest.mark.parametrize("sample_rate", [16000, 24000])
def test_extractor_teacher_frames_land_at_their_times(win, hop, sample_rate):
    """On a ramp (sample value = its time in s) a box extractor's frame j reads the centre time of
    its window; aligned onto a token grid it must read each token's centre time."""
    teacher = ExtractorTeacher(_BoxExtractor(win, hop))
    assert teacher.start_seconds == pytest.approx(win / 2 / 16000 - 0.5 * hop / 16000)
    S = sample_rate  # 1 s
    ramp = ((torch.arange(S, dtype=torch.float64) + 0.5) / sample_rate).float()[None, None]
    tf = teacher(ramp, torch.tensor([S]), sample_rate)
    token_rate = 12.5
    aligned, valid = align_features(tf, int(token_rate), token_rate)
    centres = (torch.arange(int(token_rate)) + 0.5) / token_rate
    inner = valid[0] & (centres > 0.1) & (centres < 0.9)  # away from the resampler's edges
    assert inner.sum() >= 8
    tol = dict(atol=2e-4, rtol=1e-3)  # rtol: torchaudio's resampler has a DC gain just under 1
    assert torch.allclose(aligned[0, inner, 0], centres[inner], **tol), aligned[0, :, 0] - centres
    # a teacher that ignored frame_offset_s would be win / 2 off
    wrong = TeacherFeatures(tf.features, tf.frame_rate, tf.start - win / 2 / 16000, tf.lengths)
    off, _ = align_features(wrong, int(token_rate), token_rate)
    assert not torch.allclose(off[0, inner, 0], centres[inner], **tol)


def test_extractor_teacher_needs_a_feature_extractor():
    with pytest.raises(TypeError, match="FeatureExtractor"):
        ExtractorTeacher(ProjectionTeacher())


def test_mfcc_teacher_through_build_teacher():
    teacher = build_teacher(TeacherConfig(kind="mfcc"))
    assert teacher.frame_rate == 100.0 and teacher.dim == 39
    assert teacher.start_seconds == pytest.approx(200 / 16000 - 0.5 / 100)
    wav = torch.randn(2, 1, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    a = teacher(wav, torch.tensor([8000, 4000]), 8000)  # resampled to 16 kHz
    assert a.lengths.tolist() == [1 + (16000 - 400) // 160, 1 + (8000 - 400) // 160]
    assert teacher.describe()["extractor"]["type"] == "mfcc"


# ---------------------------------------------------------------------------- Whisper
def _needs_torch_whisper():
    try:
        extractor_class("whisper")
    except (FeatureError, ImportError) as e:
        pytest.skip(f"needs the PyTorch Whisper extractor (Whisper merge): {e}")


def _tiny_whisper(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.WhisperConfig(
        vocab_size=64, num_mel_bins=80, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, d_model=16, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=16, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        suppress_tokens=[], begin_suppress_tokens=[])
    torch.manual_seed(0)
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf, tmp_path / "hf"


@pytest.mark.parametrize("kind", ["whisper", "hf"])
def test_whisper_teacher_is_the_whisper_extractor(tmp_path, kind):
    _needs_torch_whisper()
    transformers = pytest.importorskip("transformers")
    hf, path = _tiny_whisper(tmp_path)
    teacher = build_teacher(TeacherConfig(kind=kind, path=str(path)))
    assert isinstance(teacher, ExtractorTeacher) and teacher.spec.kind == "whisper"
    assert teacher.dim == 16 and teacher.frame_rate == 50.0
    assert teacher.start_seconds == pytest.approx(teacher.extractor.frame_offset_s - 0.5 / 50)
    torch.manual_seed(1)
    wav = torch.randn(2, 1, 16000) * 0.1
    got = teacher(wav, torch.tensor([16000, 8000]), 16000)
    assert got.features.shape == (2, 50, 16) and got.lengths.tolist() == [50, 25]
    direct = teacher.extractor.extract(wav, torch.tensor([16000, 8000]))
    torch.testing.assert_close(got.features, direct.feats)
    # padded to Whisper's 30 s window (pad_to_window, the default): the reference encoder's states
    fe = transformers.WhisperFeatureExtractor(feature_size=80)
    mel = fe(wav[0, 0].numpy(), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ref = hf.model.encoder(mel).last_hidden_state[0, :50]
    assert torch.allclose(got.features[0], ref, atol=1e-3), (got.features[0] - ref).abs().max()
    # resampled input gives the same frame grid
    at8k = teacher(wav[:, :, ::2], torch.tensor([8000, 4000]), 8000)
    assert at8k.features.shape == (2, 50, 16) and at8k.lengths.tolist() == [50, 25]


def test_whisper_name_is_resolved_by_build_teacher(tmp_path, monkeypatch):
    _needs_torch_whisper()
    _, path = _tiny_whisper(tmp_path)
    monkeypatch.setenv("SPEECHTOK_WHISPER_BASE", str(path))  # whisper:base -> this directory
    teacher = build_teacher(TeacherConfig(kind="whisper", path="whisper:base"))
    assert teacher.dim == 16 and teacher.spec.kind == "whisper"


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
