"""Dedup and BPE over Codes: exact round trips (property-based), durations, K > 1, files."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechtok.bpe import UnitBPE, symbol, symbol_index
from speechtok.codes import Codes, CodesError
from speechtok.dedup import dedup, undedup


def make_codes(rows: list[list[list[int]]], sizes: tuple[int, ...], model_id: str = "units@x") -> Codes:
    """rows: per item, per codebook, a list of codes (items may differ in length)."""
    K = len(sizes)
    T = max((len(r[0]) for r in rows), default=0)
    c = torch.full((len(rows), K, T), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        for k in range(K):
            c[b, k, : len(r[k])] = torch.tensor(r[k], dtype=torch.long)
    return Codes.from_tensor(c, torch.tensor([len(r[0]) for r in rows]), frame_rate=50.0, codebook_sizes=sizes,
                             sample_rate=16000, model_id=model_id).validate()


@st.composite
def codes_strategy(draw, max_k: int = 1, max_size: int = 6):
    K = draw(st.integers(1, max_k))
    sizes = tuple(draw(st.integers(1, max_size)) for _ in range(K))
    B = draw(st.integers(1, 4))
    rows = []
    for _ in range(B):
        T = draw(st.integers(0, 40))
        # runs make dedup non-trivial
        rows.append([[min(s - 1, v) for v in draw(st.lists(st.integers(0, s - 1), min_size=T, max_size=T))]
                     for s in sizes])
        if T and draw(st.booleans()):
            rep = draw(st.integers(1, 4))
            rows[-1] = [[v for v in r for _ in range(rep)] for r in rows[-1]]
    return make_codes(rows, sizes)


@settings(max_examples=60, deadline=None)
@given(codes_strategy(max_k=3))
def test_dedup_undedup_roundtrip(codes):
    d = dedup(codes).validate()
    assert torch.equal(d.grid_frames(), codes.lengths)  # durations cover every frame
    m = d.mask()
    c = d.codes[:, :, :]
    if d.num_frames > 1:  # no two equal consecutive valid tokens remain
        same = (c[:, :, 1:] == c[:, :, :-1]).all(1) & m[:, 1:]
        assert not same.any()
    back = undedup(d)
    assert torch.equal(back.codes, codes.codes) and torch.equal(back.lengths, codes.lengths)
    assert back.durations is None
    assert torch.equal(dedup(back).codes, d.codes)  # idempotent through the inverse
    torch.testing.assert_close(d.seconds(), codes.seconds())


def test_dedup_sums_existing_durations():
    c = make_codes([[[1, 1, 2, 2, 2, 1]]], (3,))
    d1 = dedup(c)
    assert d1.codes[0, 0].tolist() == [1, 2, 1] and d1.durations[0].tolist() == [2, 3, 1]
    d2 = dedup(d1.with_(codes=torch.tensor([[[1, 1, 1]]])))
    assert d2.durations[0].tolist() == [6]


@pytest.fixture(scope="module")
def corpus():
    g = torch.Generator().manual_seed(0)
    words = [torch.randint(0, 12, (int(n),), generator=g) for n in torch.randint(2, 6, (8,), generator=g)]
    rows = []
    for _ in range(30):
        idx = torch.randint(0, len(words), (12,), generator=g)
        rows.append([torch.cat([words[i] for i in idx]).tolist()])
    return make_codes(rows, (12,))


@pytest.fixture(scope="module")
def bpe(corpus):
    return UnitBPE.train(corpus, vocab_size=60)


def test_bpe_learns_merges_and_compresses(bpe, corpus):
    assert 12 < bpe.vocab_size <= 60
    enc = bpe.encode(corpus).validate()
    assert enc.lengths.sum() < corpus.lengths.sum() * 0.7
    assert torch.equal(enc.grid_frames(), corpus.lengths)
    assert enc.codebook_sizes == (bpe.vocab_size,) and enc.model_id == bpe.model_id


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(0, 11), max_size=50), min_size=1, max_size=4), st.booleans())
def test_bpe_roundtrip_units_and_durations(bpe, rows, deduped):
    codes = make_codes([[r] for r in rows], (12,))
    src = dedup(codes) if deduped else codes
    enc = bpe.encode(src).validate()
    dec = bpe.decode(enc).validate()
    assert torch.equal(dec.codes, src.codes) and torch.equal(dec.lengths, src.lengths)
    assert dec.model_id == codes.model_id
    # token durations are exact: each equals the frames of the units it spells
    torch.testing.assert_close(enc.seconds(), codes.seconds())
    if deduped:
        for b in range(codes.batch_size):
            pos = 0
            cum = torch.cat([torch.zeros(1, dtype=torch.long), src.durations[b, : int(src.lengths[b])].cumsum(0)])
            for t in range(int(enc.lengths[b])):
                n = len(bpe._spell[int(enc.codes[b, 0, t])])
                assert int(enc.durations[b, t]) == int(cum[pos + n] - cum[pos])
                pos += n
    else:
        assert dec.durations is None


@settings(max_examples=25, deadline=None)
@given(codes_strategy(max_k=3, max_size=5))
def test_bpe_interleaved_codebooks_roundtrip(codes):
    bpe = UnitBPE.train(codes, vocab_size=sum(codes.codebook_sizes) + 8, min_frequency=1)
    enc = bpe.encode(codes).validate()
    assert enc.frame_rate == codes.frame_rate * codes.num_codebooks
    torch.testing.assert_close(enc.seconds(), codes.seconds())
    dec = bpe.decode(enc)
    assert torch.equal(dec.codes, codes.codes) and dec.codebook_sizes == codes.codebook_sizes


def test_symbols_survive_normalization():
    import unicodedata

    from speechtok.bpe import _decode_symbols, _encode_symbols

    idx = torch.tensor([0, 1, 20991, 20992, 40000])
    assert torch.equal(_decode_symbols(_encode_symbols(idx)), idx)
    for i in idx.tolist():
        ch = symbol(i)
        assert symbol_index(ch) == i
        for form in ("NFC", "NFD", "NFKC", "NFKD"):
            assert unicodedata.normalize(form, ch) == ch


def test_bpe_save_load_and_model_checks(bpe, corpus, tmp_path):
    bpe.save(tmp_path / "bpe")
    back = UnitBPE.load(tmp_path / "bpe")
    assert back.model_id == bpe.model_id
    assert torch.equal(back.encode(corpus).codes, bpe.encode(corpus).codes)
    other = corpus.with_(model_id="units@other")
    with pytest.raises(CodesError, match="units@other"):
        bpe.encode(other)
    (tmp_path / "bpe" / "bpe.json").write_text("{}")
    with pytest.raises(CodesError, match="bpe.json"):
        UnitBPE.load(tmp_path / "bpe")
