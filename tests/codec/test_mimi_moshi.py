"""kyutai moshi naming: a moshi ``MimiModel`` (random weights) loads through `speechtok.load` with
identical codes. moshi pins torch<2.10 but its Mimi runs on torch 2.11: the README's test command
installs it without its dependency pins (skipped where moshi does not import)."""
from __future__ import annotations

import pytest
import torch

from speechtok.codec.moshi_import import _interleaved_to_half, convert_moshi_mimi_state_dict


pytestmark = pytest.mark.usefixtures("one_thread")


def test_rope_permutation_maps_interleaved_pairs_to_halves():
    # one head of 4 dims: moshi rows (r0, i0, r1, i1) -> (r0, r1, i0, i1)
    w = torch.arange(8.0).view(4, 2)
    assert _interleaved_to_half(w, 1)[:, 0].tolist() == [0.0, 4.0, 2.0, 6.0]
    sd = {"encoder_transformer.transformer.layers.0.self_attn.in_projs.0.weight": torch.eye(12, 4),
          "quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum": torch.zeros(2, 2),
          "decoder.model.2.convtr.convtr.weight": torch.zeros(1), "downsample.conv.conv.conv.weight": torch.zeros(1)}
    out = convert_moshi_mimi_state_dict(sd, num_heads=1)
    assert set(out) == {"encoder_transformer.layers.0.self_attn.in_proj.weight",
                        "quantizer.acoustic_rvq.layers.3.codebook.embed_sum",
                        "decoder.layers.2.conv.weight", "downsample.conv.weight"}


def test_moshi_mimi_matches(tmp_path, sample_path):
    pytest.importorskip("moshi.models.loaders")
    import speechtok
    from speechtok.audio import load_audio
    from speechtok.benchmarks.codec_speed import make_moshi_mimi

    m = make_moshi_mimi(tmp_path / "mimi.safetensors")
    tok = speechtok.load(tmp_path / "mimi.safetensors")  # a single moshi weights file
    wav, _ = load_audio(sample_path, sample_rate=24000)
    x = wav[None, :, 6000:6000 + 1920 * 10]
    with torch.no_grad():
        ref = m.encode(x)
        ref_audio = m.decode(ref)
    codes = tok.encode(x, sample_rate=24000)
    assert torch.equal(codes.codes, ref) and ref.unique().numel() > 4
    audio = tok.decode(codes).audio
    assert (audio - ref_audio[..., : audio.shape[-1]]).abs().max() <= 1e-4 * max(1.0, float(ref_audio.abs().max()))
    # moshi's own streaming (one 80 ms frame per call) gives the same codes as a speechtok stream
    hop = tok.hop_length
    with torch.no_grad(), m.streaming(1):
        moshi_stream = torch.cat([m.encode(x[..., i:i + hop]) for i in range(0, x.shape[-1], hop)], dim=-1)
    with tok.stream(1) as s:
        ours = torch.cat([s.encode(x[..., i:i + 700]) for i in range(0, x.shape[-1], 700)] + [s.flush()], dim=-1)
    assert torch.equal(moshi_stream, ref) and torch.equal(ours[..., : ref.shape[-1]], ref)
    # encode-only loading (what `speechtok encode` does): same codes and model_id, no decoder memory
    enc = speechtok.load(tmp_path / "mimi.safetensors", encoder_only=True)
    assert enc.model_id == tok.model_id and torch.equal(enc.encode(x, sample_rate=24000).codes, ref)
    assert not enc.can_decode and all(p.is_meta for p in enc.model.decoder.parameters())


def test_other_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    import speechtok
    from speechtok.registry import ModelLoadError

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelLoadError, match="other.safetensors: a safetensors file that is not a kyutai moshi"):
        speechtok.load(tmp_path / "other.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="broken.safetensors: unreadable safetensors file"):
        speechtok.load(tmp_path / "broken.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="notes.txt: expected a model directory"):
        speechtok.load(tmp_path / "notes.txt")
