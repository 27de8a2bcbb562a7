"""Streaming sessions: streamed == offline exactly for any chunking; the past never changes.

Decoded audio tolerance: streamed decode equals offline decode up to float reassociation across
different matrix shapes per call (observed <= ~1e-7 relative); we assert 1e-5 absolute on audio
of unit scale.
"""
from __future__ import annotations

import random

import pytest
import torch

from speechtok.codec import CodecTokenizer, preset


pytestmark = pytest.mark.usefixtures("one_thread")


def _audio(B: int, S: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(S) / 8000
    base = torch.sin(2 * torch.pi * 180 * t) * 0.4
    return (base + 0.3 * torch.randn(B, 1, S, generator=g)).float()


@pytest.fixture(scope="module")
def tok():
    """A tiny random codec whose codebooks were k-means initialised on audio (one training
    forward), so codes vary from frame to frame and equality tests are not vacuous."""
    tok = CodecTokenizer.from_config(preset("tiny"), seed=0)
    tok.model.train()
    with torch.no_grad():
        tok.model(_audio(4, tok.hop_length * 40, seed=99))
    tok.model.eval()
    return tok


def _stream_encode(tok, x: torch.Tensor, sizes, seed: int) -> torch.Tensor:
    rng = random.Random(seed)
    out, i = [], 0
    with tok.stream(x.shape[0]) as s:
        while i < x.shape[-1]:
            n = rng.choice(sizes)
            out.append(s.encode(x[..., i:i + n]))
            i += n
        out.append(s.flush())
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("sizes", [(1,), (0, 1, 2, 3, 5, 7, 16, 17, 33), (15, 16, 17), (100, 1000)])
def test_streamed_codes_equal_offline(tok, sizes):
    hop = tok.hop_length
    S = hop * 11 + 5  # a partial last frame: flush pads it like offline encode
    x = _audio(2, S)
    offline = tok.encode(x, sample_rate=tok.sample_rate)
    assert offline.num_frames == 12 and offline.lengths.tolist() == [12, 12]
    for seed in range(1 if sizes == (1,) else 2):
        assert torch.equal(_stream_encode(tok, x, sizes, seed), offline.codes)


def test_codes_are_not_trivial(tok):
    codes = tok.encode(_audio(1, tok.hop_length * 30), sample_rate=tok.sample_rate).codes
    for k in range(codes.shape[1]):
        assert codes[0, k].unique().numel() > 1  # equality tests above would be vacuous otherwise


def test_future_audio_never_changes_past_codes(tok):
    hop = tok.hop_length
    x = _audio(1, hop * 24)
    with tok.stream(1) as s:
        first = s.encode(x[..., : hop * 10 + 3])
    assert first.shape[-1] == 10
    for seed in range(3):
        y = x.clone()
        g = torch.Generator().manual_seed(seed)
        y[..., hop * 10 + 3:] = torch.randn(1, 1, y.shape[-1] - hop * 10 - 3, generator=g)
        codes = tok.encode(y, sample_rate=tok.sample_rate).codes
        assert torch.equal(codes[..., :10], first)
        assert not torch.equal(codes, tok.encode(x, sample_rate=tok.sample_rate).codes)


def test_streamed_decode_equals_offline_decode(tok):
    x = _audio(2, tok.hop_length * 17)
    codes = tok.encode(x, sample_rate=tok.sample_rate)
    offline = tok.decode(codes)
    rng = random.Random(0)
    with tok.stream(2) as s:
        parts, t = [], 0
        while t < codes.num_frames:
            n = rng.choice([0, 1, 1, 2, 5])
            parts.append(s.decode(codes.codes[..., t:t + n]))
            t += n
    streamed = torch.cat(parts, dim=-1)
    assert streamed.shape == offline.audio.shape
    torch.testing.assert_close(streamed, offline.audio, rtol=0, atol=1e-5)


def test_reset_restarts_one_item(tok):
    hop = tok.hop_length
    a, b = _audio(2, hop * 9, seed=1), _audio(2, hop * 7, seed=2)
    with tok.stream(2) as s:
        s.encode(a)
        s.decode(tok.encode(a, sample_rate=tok.sample_rate).codes)
        s.reset(torch.tensor([True, False]))
        codes = s.encode(b)
        audio = s.decode(codes)
    fresh = tok.encode(b[:1], sample_rate=tok.sample_rate)
    assert torch.equal(codes[:1], fresh.codes)
    cont = tok.encode(torch.cat([a, b], dim=-1)[1:], sample_rate=tok.sample_rate).codes
    assert torch.equal(codes[1:], cont[..., 9:])
    torch.testing.assert_close(audio[:1], tok.decode(fresh).audio, rtol=0, atol=1e-5)


def test_reset_mid_frame_and_closed_stream_fail_loudly(tok):
    with tok.stream(2) as s:
        s.encode(torch.zeros(2, 1, tok.hop_length + 3))
        assert s.pending_samples == 3
        with pytest.raises(ValueError, match="pending"):
            s.reset([True, False])
        last = s.flush()
        assert last.shape == (2, tok.num_codebooks, 1)
        with pytest.raises(RuntimeError, match="closed"):
            s.encode(torch.zeros(2, 1, 4))
    with tok.stream(2) as s:
        with pytest.raises(ValueError, match=r"\[B=2, C=1, n\]"):
            s.encode(torch.zeros(3, 1, 4))
        assert s.flush().shape == (2, tok.num_codebooks, 0)


def test_stream_subset_of_codebooks(tok):
    x = _audio(1, tok.hop_length * 6)
    with tok.stream(1, n_q=2) as s:
        codes = s.encode(x)
    assert torch.equal(codes, tok.encode(x, sample_rate=tok.sample_rate).codes[:, :2])
