"""Mimi weight compatibility: a `transformers.MimiModel` saved with ``save_pretrained`` loads through
`speechtok.load` and gives the same codes and audio on real speech."""
from __future__ import annotations

import json

import pytest
import torch

import speechtok
from speechtok.codec.mimi_import import MimiImportError, config_from_hf_mimi, convert_hf_mimi_state_dict


pytestmark = pytest.mark.usefixtures("one_thread")


transformers = pytest.importorskip("transformers")


def _random_codebooks(model, seed: int) -> None:
    """HF initialises codebooks to zero (every code would be 0); give them random entries."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if hasattr(mod, "embed_sum"):
                mod.embed_sum.copy_(torch.randn(mod.embed_sum.shape, generator=g))
                mod.cluster_usage.copy_(torch.rand(mod.cluster_usage.shape, generator=g) + 0.5)
                mod._embed = None


def _speech(sample_path, sample_rate: int, hop: int, frames: int) -> torch.Tensor:
    from speechtok.audio import load_audio

    wav, _ = load_audio(sample_path, sample_rate=sample_rate)
    start = sample_rate // 4  # skip leading silence
    x = wav[None, :, start:start + hop * frames]
    assert x.shape[-1] == hop * frames
    return x


def _compare(hf, directory, x, audio_atol):
    with torch.no_grad():
        ref_codes = hf.encode(x).audio_codes
        ref_audio = hf.decode(ref_codes).audio_values
    tok = speechtok.load(directory)
    codes = tok.encode(x, sample_rate=tok.sample_rate)
    assert codes.codes.shape == ref_codes.shape
    assert torch.equal(codes.codes, ref_codes)
    assert ref_codes.unique().numel() > 4  # the comparison is not vacuous
    audio = tok.decode(codes).audio
    assert audio.shape == ref_audio.shape
    scale = ref_audio.abs().max()
    assert (audio - ref_audio).abs().max() <= audio_atol * max(1.0, float(scale))
    return tok, codes


def test_tiny_mimi_matches_transformers(tmp_path, sample_path):
    # Small shapes, but every feature: 2 residual layers, conv shortcut, sliding window shorter
    # than the input, grouped upsampling, several semantic codebooks.
    cfg = transformers.MimiConfig(
        sampling_rate=8000, hidden_size=32, num_filters=4, upsampling_ratios=[4, 2], num_residual_layers=2,
        use_conv_shortcut=True, codebook_size=16, codebook_dim=8, vector_quantization_hidden_dimension=8,
        num_quantizers=5, num_semantic_quantizers=2, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2,
        intermediate_size=48, sliding_window=6, upsample_groups=16, layer_scale_initial_scale=0.5)
    torch.manual_seed(0)
    hf = transformers.MimiModel(cfg).eval()
    _random_codebooks(hf, 0)
    hf.save_pretrained(tmp_path / "tiny-mimi")
    x = _speech(sample_path, 8000, 16, 40)
    tok, codes = _compare(hf, tmp_path / "tiny-mimi", x, audio_atol=1e-4)
    assert tok.model_id.startswith("mimi@") and tok.n_semantic == 2
    # streaming the imported model gives the same codes
    with tok.stream(1) as s:
        streamed = torch.cat([s.encode(x[..., i:i + 23]) for i in range(0, x.shape[-1], 23)] + [s.flush()], -1)
    assert torch.equal(streamed, codes.codes)
    # encode-only loading reads no decoder weights and changes neither codes nor model_id
    enc = speechtok.load(tmp_path / "tiny-mimi", encoder_only=True)
    assert enc.model_id == tok.model_id and not enc.can_decode
    assert all(p.is_meta for p in enc.model.decoder.parameters())
    assert torch.equal(enc.encode(x, sample_rate=enc.sample_rate).codes, codes.codes)
    with pytest.raises(RuntimeError, match="encoding only"):
        enc.decode(codes)


def test_real_size_mimi_matches_transformers(tmp_path, sample_path):
    torch.manual_seed(0)
    hf = transformers.MimiModel(transformers.MimiConfig()).eval()  # the published default config
    _random_codebooks(hf, 1)
    hf.save_pretrained(tmp_path / "kyutai-mimi")
    x = _speech(sample_path, 24000, 1920, 10)  # 0.8 s of real speech, 10 frames
    tok, codes = _compare(hf, tmp_path / "kyutai-mimi", x, audio_atol=1e-4)
    assert (tok.sample_rate, tok.frame_rate, tok.codebook_sizes) == (24000, 12.5, (2048,) * 32)


def test_transformers_v5_names_and_errors(tmp_path):
    cfg = transformers.MimiConfig(hidden_size=16, num_filters=2, upsampling_ratios=[2, 2], codebook_size=8,
                                  codebook_dim=4, vector_quantization_hidden_dimension=4, num_quantizers=2,
                                  num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1, intermediate_size=8,
                                  upsample_groups=16)
    hf = transformers.MimiModel(cfg)
    ours = convert_hf_mimi_state_dict(hf.state_dict())  # in-memory (v5) names
    from speechtok.codec import build_codec

    model = build_codec(config_from_hf_mimi(cfg.to_dict()))
    model.load_state_dict(ours, strict=True)
    with pytest.raises(MimiImportError, match="num_key_value_heads"):
        config_from_hf_mimi({**cfg.to_dict(), "num_key_value_heads": 1})
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "mimi"}))
    with pytest.raises(MimiImportError, match="missing weights"):
        speechtok.load(tmp_path / "m")
