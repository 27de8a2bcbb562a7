"""Exactness by construction: a padded batch runs each item alone (its numbers cannot depend on its
batch-mates), and `code_margins` says which codes sit within float rounding of a tie."""
from __future__ import annotations

import math

import pytest
import torch

from speechtok.codec import CodecTokenizer, preset
from speechtok.codec.quantization import EuclideanCodebook, ResidualVQ
from speechtok.codec.quantization.kmeans import code_margins, nearest


pytestmark = pytest.mark.usefixtures("one_thread")


def _audio(B: int, S: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(B, 1, S, generator=g)


@pytest.fixture(scope="module")
def tok():
    tok = CodecTokenizer.from_config(preset("tiny"), seed=0)
    tok.model.train()
    with torch.no_grad():
        tok.model(_audio(4, tok.hop_length * 40, seed=99))  # k-means initialises the codebooks
    tok.model.eval()
    return tok


def test_euclidean_margin_closed_form():
    book = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0]])
    x = torch.tensor([[0.5, 0.0], [1.0, 0.0], [0.0, 4.0]])
    m = code_margins(x, book)
    # scores s_j = 0.5|c_j|^2 - x.c_j; margin = (s_2nd - s_best) / (0.5|x|^2 + 0.5|c_best|^2)
    assert nearest(x, book).tolist() == [0, 0, 2]
    assert m[0].item() == pytest.approx((2.0 - 1.0) / 0.125)
    assert m[1].item() == 0.0  # exactly between codes 0 and 1: a tie
    assert m[2].item() == pytest.approx((0.0 - (12.5 - 20.0)) / (8.0 + 12.5))


def test_cosine_margin_and_single_code():
    book = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=1)
    x = torch.tensor([[1.0, 0.0]])
    assert code_margins(x, book, cosine=True).item() == pytest.approx(1 - math.sqrt(0.5))
    assert code_margins(x, book[:1]).isinf().all()


def test_rvq_margins_follow_the_residual():
    torch.manual_seed(0)
    rvq = ResidualVQ(input_dim=8, dim=8, n_q=3, codebook_size=16).eval()
    for layer in rvq.layers:
        layer.codebook.maybe_initialize(torch.randn(64, 8), torch.ones(64, dtype=torch.bool))
    x = torch.randn(2, 8, 5)
    codes = rvq.encode(x)
    m = rvq.code_margins(x, codes)
    assert m.shape == (2, 3, 5) and (m >= 0).all()
    book = rvq.layers[0].codebook
    assert isinstance(book, EuclideanCodebook)
    rows = x.transpose(1, 2).reshape(-1, 8)
    torch.testing.assert_close(m[:, 0].reshape(-1), code_margins(rows, book.table()))


def test_padded_batch_runs_each_item_alone(tok, monkeypatch):
    """The model never sees a batch of more than one item, nor another item's length."""
    hop = tok.hop_length
    lengths = [hop * 7 + 3, hop * 2, hop * 11]
    x = torch.zeros(3, 1, max(lengths))
    for i, n in enumerate(lengths):
        x[i, :, :n] = _audio(1, n, seed=i)[0]
    seen = []
    real = tok.model.encode_latent

    def spy(audio, state=None):
        seen.append(tuple(audio.shape))
        return real(audio, state)

    monkeypatch.setattr(tok.model, "encode_latent", spy)
    codes = tok.encode(x, sample_rate=tok.sample_rate, lengths=torch.tensor(lengths))
    assert seen and all(b == 1 for b, _, _ in seen)
    assert sum(s for _, _, s in seen) == sum(-(-n // hop) * hop for n in lengths)  # no padded frames computed
    for i, n in enumerate(lengths):
        alone = tok.encode(x[i:i + 1, :, :n], sample_rate=tok.sample_rate).codes[0]
        assert torch.equal(codes.codes[i, :, :alone.shape[-1]], alone)


def test_tokenizer_code_margins(tok):
    hop = tok.hop_length
    lengths = torch.tensor([hop * 9, hop * 4 + 5])
    x = _audio(2, hop * 9, seed=3)
    codes, margins = tok.code_margins(x, sample_rate=tok.sample_rate, lengths=lengths)
    assert torch.equal(codes.codes, tok.encode(x, sample_rate=tok.sample_rate, lengths=lengths).codes)
    assert margins.shape == codes.codes.shape
    valid = codes.codes >= 0
    assert torch.isnan(margins[~valid]).all() and (margins[valid] >= 0).all()
    assert margins[valid].max() > 0  # not all ties: the measure is not vacuous


def test_padded_batch_mode_is_one_model_call(tok, monkeypatch):
    """``per_item_batches = False`` (for GPUs) runs the padded batch at once; at this size its codes
    still equal the per-item ones."""
    hop = tok.hop_length
    lengths = torch.tensor([hop * 6, hop * 3 + 1])
    x = _audio(2, hop * 6, seed=5)
    exact = tok.encode(x, sample_rate=tok.sample_rate, lengths=lengths)
    seen = []
    real = tok.model.encode_latent
    monkeypatch.setattr(tok.model, "encode_latent", lambda a, s=None: seen.append(a.shape[0]) or real(a, s))
    tok.per_item_batches = False
    try:
        padded = tok.encode(x, sample_rate=tok.sample_rate, lengths=lengths)
    finally:
        tok.per_item_batches = True
    assert seen and set(seen) == {2}
    assert torch.equal(padded.codes, exact.codes) and torch.equal(padded.lengths, exact.lengths)


def test_aligned_stream_makes_the_offline_calls(tok, monkeypatch):
    """An aligned stream runs the model on exactly the offline windows, whatever the chunking, so its
    codes are the offline codes by construction (not only where rounding happens to agree)."""
    hop, w = tok.hop_length, tok.cfg.window_frames
    x = _audio(1, hop * (3 * w + 2) + 5, seed=7)
    calls = []
    real = tok.model.encode_latent
    monkeypatch.setattr(tok.model, "encode_latent", lambda a, s=None: calls.append(a.shape[-1]) or real(a, s))
    ref = tok.encode(x, sample_rate=tok.sample_rate).codes
    offline, calls[:] = list(calls), []
    g = torch.Generator().manual_seed(0)
    for hi in (1, hop // 2 + 1, 3 * hop, 5 * w * hop):
        with tok.stream(1, aligned=True) as s:
            parts, pos = [], 0
            while pos < x.shape[-1]:
                n = int(torch.randint(1, hi + 1, (1,), generator=g))
                parts.append(s.encode(x[..., pos:pos + n]))
                pos += n
            parts.append(s.flush())
        assert calls == offline, hi
        assert torch.equal(torch.cat(parts, dim=-1), ref)
        calls.clear()
    with tok.stream(1, aligned=True) as s:  # frames wait for their window
        assert s.encode(x[..., : hop * (w - 1)]).shape[-1] == 0
        assert s.encode(x[..., hop * (w - 1): hop * w]).shape[-1] == w
        s.encode(x[..., hop * w: hop * w + hop])
        with pytest.raises(ValueError, match="window boundary"):
            s.reset(torch.tensor([True]))


def test_window_one_aligned_stream_emits_every_frame(tok):
    one = tok.with_window_frames(1)
    assert one.model_id != tok.model_id and one.cfg.window_frames == 1 and tok.cfg.window_frames > 1
    hop = tok.hop_length
    x = _audio(1, hop * 6 + 2, seed=9)
    ref = one.encode(x, sample_rate=tok.sample_rate).codes
    with one.stream(1, aligned=True) as s:
        got = [s.encode(x[..., i:i + hop]) for i in range(0, x.shape[-1], hop)]
        assert [g.shape[-1] for g in got[:6]] == [1] * 6  # no added latency
        got.append(s.flush())
    assert torch.equal(torch.cat(got, dim=-1), ref)
    with pytest.raises(Exception, match="window_frames"):
        tok.with_window_frames(0)
