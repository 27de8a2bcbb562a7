"""kyutai moshi naming: a moshi ``MimiModel`` (random weights) loads through `load_moshi_mimi` with
identical codes. moshi pins torch<2.10, so this runs only where moshi imports (skipped otherwise)."""
from __future__ import annotations

import pytest
import torch

from speechtok.codec.moshi_import import _interleaved_to_half, convert_moshi_mimi_state_dict


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared machine a second thread mostly waits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    loaders = pytest.importorskip("moshi.models.loaders")
    from safetensors.torch import save_file

    from speechtok.audio import load_audio
    from speechtok.codec.moshi_import import load_moshi_mimi

    torch.manual_seed(0)
    m = loaders.get_mimi(None, device="cpu", num_codebooks=32).eval()
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith("embedding_sum"):
                buf.normal_()
            elif name.endswith("cluster_usage"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("_initialized"):
                buf.fill_(1.0)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "mimi.safetensors"))
    tok = load_moshi_mimi(tmp_path / "mimi.safetensors")
    wav, _ = load_audio(sample_path, sample_rate=24000)
    x = wav[None, :, 6000:6000 + 1920 * 10]
    with torch.no_grad():
        ref = m.encode(x)
        ref_audio = m.decode(ref)
    codes = tok.encode(x, sample_rate=24000)
    assert torch.equal(codes.codes, ref) and ref.unique().numel() > 4
    audio = tok.decode(codes).audio
    assert (audio - ref_audio[..., : audio.shape[-1]]).abs().max() <= 1e-4 * max(1.0, float(ref_audio.abs().max()))
