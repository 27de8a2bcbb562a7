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
    hole = lay.special_id("hole")
    t = lay.encode(c)
    assert t.tokens.tolist() == [[[1, 2, 3, hole], [hole, 4, 5, 6]]] and t.lengths.tolist() == [4]


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


# ---------------------------------------------------------------- layouts that travel, masks, windows
from dataclasses import replace  # noqa: E402

from speechtok.lm import LayoutError, make_windows, window_codes  # noqa: E402


def _codes(K=3, T=6, B=2, lengths=(6, 4), sizes=None):
    sizes = sizes or tuple(range(5, 5 + K))
    g = torch.Generator().manual_seed(3)
    raw = torch.stack([torch.randint(0, s, (B, T), generator=g) for s in sizes], 1)
    return Codes.from_tensor(raw, torch.tensor(lengths), frame_rate=12.5, codebook_sizes=sizes,
                             sample_rate=24000, model_id="mimi@abc", n_semantic=1)


@pytest.mark.parametrize("kw", LAYOUTS)
def test_layout_saves_loads_and_decodes_without_a_template(kw):
    codes = _codes()
    layout = TokenLayout.for_codes(codes, **kw)
    back = TokenLayout.from_json(layout.to_json(), "x.json")
    assert back == layout and back.to_dict()["format"] == "speechtok.layout"
    out = back.decode(layout.encode(codes))
    assert out.model_id == "mimi@abc" and out.frame_rate == 12.5 and out.sample_rate == 24000 and out.n_semantic == 1
    assert torch.equal(out.codes, codes.codes)


def test_saved_layout_refuses_foreign_newer_and_malformed():
    d = TokenLayout.for_codes(_codes()).to_dict()
    for bad, msg in [({**d, "format": "other"}, "not a speechtok token layout"),
                     ({**d, "format_version": 99}, "newer"), ({**d, "pattern": "zigzag"}, "invalid token layout"),
                     ({**d, "codebook_sizes": [4, -1]}, "positive ints"), ({**d, "offset": "7"}, "'offset' must be int"),
                     ({**d, "surprise": 1}, "unknown token layout keys")]:
        with pytest.raises(LayoutError, match=msg):
            TokenLayout.from_dict(bad, "data/layout.json")
    with pytest.raises(CodesError, match="does not record the model"):
        TokenLayout(codebook_sizes=(5, 6, 7)).decode(TokenLayout(codebook_sizes=(5, 6, 7)).encode(_codes()))
    with pytest.raises(CodesError, match="layout is for model"):
        replace(TokenLayout.for_codes(_codes()), model_id="other@1").encode(_codes())


def test_a_layout_over_the_first_codebooks_takes_them():
    codes = _codes()
    lay = TokenLayout.for_codes(codes, codebooks=2, pattern="delay")
    out = lay.decode(lay.encode(codes))
    assert out.num_codebooks == 2 and torch.equal(out.codes, codes.codes[:, :2])


def test_pad_and_holes_are_distinct_and_masks_follow_them():
    codes = _codes()
    lay = TokenLayout.for_codes(codes, pattern="delay", add_bos=True, add_eos=True)
    tok = lay.encode(codes)
    pad, hole = lay.special_id("pad"), lay.special_id("hole")
    assert pad != hole and lay.vocab_size == sum(codes.codebook_sizes) + 4
    att, lab = lay.attention_mask(tok), lay.labels(tok)
    assert torch.equal(att, tok.tokens != pad)  # holes are attended, padding is not
    assert ((tok.tokens == hole) & att).any()
    assert (lab[tok.tokens == hole] == -100).all() and (lab[~att] == -100).all()
    keep = att & (tok.tokens != hole)
    assert torch.equal(lab[keep], tok.tokens[keep])
    par = TokenLayout.for_codes(codes, pattern="delay", flat=False)
    ptok = par.encode(codes)
    assert par.labels(ptok).shape == ptok.tokens.shape and par.attention_mask(ptok).shape == ptok.tokens[:, 0].shape


@pytest.mark.parametrize("kw", LAYOUTS)
@pytest.mark.parametrize("frames,hop", [(4, 4), (3, 2), (8, 8)])
def test_windows_cut_on_frame_boundaries_and_decode_back(kw, frames, hop):
    codes = _codes(T=9, lengths=(9, 5))
    lay = TokenLayout.for_codes(codes, **kw)
    win = make_windows(lay, codes, frames, hop)
    L = lay.frame_tokens(frames)
    assert win.tokens.tokens.shape[-1] == L and win.labels.shape == win.tokens.tokens.shape
    assert torch.equal(win.attention_mask, torch.arange(L)[None] < win.tokens.lengths[:, None])
    back = window_codes(lay, win)
    for i in range(len(win)):
        b, s, n = int(win.item[i]), int(win.start[i]), int(back.lengths[i])
        assert n == min(frames, int(codes.lengths[b]) - s)
        assert torch.equal(back.codes[i, :, :n], codes.codes[b, :, s:s + n])
    # every frame of every item is covered, in order
    for b in range(2):
        starts = win.start[win.item == b].tolist()
        assert starts[0] == 0 and starts == sorted(starts) and starts[-1] + frames >= int(codes.lengths[b])
    if lay.add_bos:
        assert (win.tokens.tokens[:, 0] == lay.special_id("bos")).sum() == 2  # only the items' first windows
