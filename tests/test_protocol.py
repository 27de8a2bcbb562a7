import pytest
import torch

from speechtok.protocol import prepare_audio


def test_padded_batch_resamples_exactly_like_items():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 2205, generator=g), torch.randn(1, 1000, generator=g)
    batch = torch.zeros(2, 1, 2205)
    batch[0], batch[1, :, :1000] = a, b
    out, n = prepare_audio(batch, 22050, 16000, 1, torch.tensor([2205, 1000]))
    for i, x in enumerate((a, b)):
        one, m = prepare_audio(x, 22050, 16000, 1)
        assert int(n[i]) == int(m[0]) and torch.equal(out[i, :, : int(n[i])], one[0])
        assert (out[i, :, int(n[i]):] == 0).all()
    assert n.tolist() == [1600, 726]


def test_empty_and_tiny_inputs():
    out, n = prepare_audio(torch.zeros(1, 0), 22050, 16000, 1)
    assert out.shape == (1, 1, 0) and n.tolist() == [0]
    out, n = prepare_audio(torch.ones(1, 1), 16000, 16000, 1)
    assert out.shape == (1, 1, 1) and n.tolist() == [1]


def test_channels_and_shapes():
    st = torch.stack([torch.ones(10), -torch.ones(10)])[None]  # [1, 2, 10]
    out, _ = prepare_audio(st, 16000, 16000, 1)
    assert out.shape == (1, 1, 10) and (out == 0).all()          # mixed down
    out, _ = prepare_audio(torch.ones(1, 10), 16000, 16000, 2)   # mono expanded to the model's 2
    assert out.shape == (1, 2, 10)
    with pytest.raises(ValueError, match=r"\[B, C, S\] or \[C, S\], got shape \(10,\)"):
        prepare_audio(torch.ones(10), 16000, 16000, 1)
    with pytest.raises(ValueError, match="lengths must be"):
        prepare_audio(torch.ones(2, 1, 10), 16000, 16000, 1, torch.tensor([11, 3]))
    with pytest.raises(TypeError, match="float"):
        prepare_audio(torch.ones(1, 10, dtype=torch.long), 16000, 16000, 1)


def test_cached_resampler_equals_torchaudio_functional():
    import torchaudio.functional as AF

    from speechtok.audio import resample

    x = torch.randn(2, 3001, generator=torch.Generator().manual_seed(3))
    for a, b in ((22050, 16000), (8000, 24000), (44100, 16000)):
        assert torch.equal(resample(x, a, b), AF.resample(x, a, b))
