import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechtok import Codes, CodesError
from speechtok.lm import LMTokens, TokenLayout


@st.composite
def random_codes(draw):
    K = draw(st.integers(1, 4))
    B = draw(st.integers(1, 3))
    T = draw(st.integers(0, 9))
    sizes = tuple(draw(st.lists(st.integers(1, 50), min_size=K, max_size=K)))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, s, (B, T), generator=g) for s in sizes], 1) if T else \
        torch.zeros(B, K, 0, dtype=torch.long)
    return Codes.from_tensor(raw, torch.tensor(lengths), frame_rate=25.0, codebook_sizes=sizes,
                             sample_rate=16000, model_id="m@0")


LAYOUTS = [dict(pattern="flatten"), dict(pattern="flatten", add_bos=True, add_eos=True, offset=7),
           dict(pattern="delay"), dict(pattern="delay", flat=False), dict(pattern="delay", add_eos=True)]


@settings(max_examples=60, deadline=None)
@given(codes=random_codes(), which=st.integers(0, len(LAYOUTS) - 1))
def test_round_trip_is_exact(codes, which):
    layout = TokenLayout.for_codes(codes, **LAYOUTS[which])
    toks = layout.encode(codes)
    ids = toks.tokens[torch.arange(toks.tokens.shape[-1])[None] < toks.lengths[:, None]] if layout.flat else None
    if ids is not None and ids.numel():
        assert int(ids.min()) >= layout.offset and int(ids.max()) < layout.vocab_size
    back = layout.decode(toks, like=codes)
    assert torch.equal(back.lengths, codes.lengths)
    T = int(codes.lengths.max()) if codes.batch_size else 0
    assert torch.equal(back.codes[..., :T], codes.codes[..., :T])


def test_flatten_is_time_major_with_codebook_offsets():
    c = Codes.from_tensor(torch.tensor([[[1, 2], [0, 3]]]), frame_rate=12.5, codebook_sizes=(4, 5),
                          sample_rate=24000, model_id="m@0")
    t = TokenLayout.for_codes(c, offset=100).encode(c)
    # frame 0: cb0=1 -> 101, cb1=0 -> 104; frame 1: cb0=2 -> 102, cb1=3 -> 107
    assert t.tokens.tolist() == [[101, 104, 102, 107]] and t.lengths.tolist() == [4]


def test_delay_pattern_shifts_codebook_k_by_k():
    c = Codes.from_tensor(torch.tensor([[[1, 2, 3], [0, 1, 2]]]), frame_rate=12.5, codebook_sizes=(4, 4),
                          sample_rate=24000, model_id="m@0")
    lay = TokenLayout.for_codes(c, pattern="delay", flat=False)
    pad = lay.special_id("pad")
    t = lay.encode(c)
    assert t.tokens.tolist() == [[[1, 2, 3, pad], [pad, 4, 5, 6]]] and t.lengths.tolist() == [4]


def test_bad_tokens_fail_loudly():
    c = Codes.from_tensor(torch.tensor([[[1, 2], [0, 3]]]), frame_rate=12.5, codebook_sizes=(4, 5),
                          sample_rate=24000, model_id="m@0")
    lay = TokenLayout.for_codes(c)
    t = lay.encode(c)
    bad = t.tokens.clone()
    bad[0, 1] = 2  # an id of codebook 0 where codebook 1 belongs
    with pytest.raises(CodesError, match="not a code of codebook 1"):
        lay.decode(LMTokens(bad, t.lengths), like=c)
    with pytest.raises(CodesError, match="multiples of K"):
        lay.decode(LMTokens(t.tokens, t.lengths - 1), like=c)
    with pytest.raises(CodesError, match="codebook sizes"):
        TokenLayout(codebook_sizes=(4, 4)).encode(c)
    with pytest.raises(ValueError):
        TokenLayout(codebook_sizes=(4,), pattern="zigzag")
