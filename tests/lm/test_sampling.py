"""Constrained sampling and lenient decoding over every layout pattern."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechtok import Codes, CodesError
from speechtok.lm import (LayoutLogitsProcessor, LayoutState, LMTokens, TokenLayout, allowed_next, decode_lenient)

FLAT_LAYOUTS = [dict(pattern="flatten"), dict(pattern="flatten", add_bos=True, add_eos=True, offset=7),
                dict(pattern="delay"), dict(pattern="delay", add_bos=True, add_eos=True, offset=3),
                dict(pattern="delay", add_eos=True)]
LAYOUTS = FLAT_LAYOUTS + [dict(pattern="delay", flat=False)]


def make_codes(K, T, sizes=None, B=1, seed=0, lengths=None):
    sizes = sizes or tuple(range(3, 3 + K))
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, s, (B, T), generator=g) for s in sizes], 1) if T else \
        torch.zeros(B, K, 0, dtype=torch.long)
    return Codes.from_tensor(raw, lengths, frame_rate=12.5, codebook_sizes=sizes, sample_rate=16000,
                             model_id="m@1", n_semantic=1)


@settings(max_examples=60, deadline=None)
@given(K=st.integers(1, 4), T=st.integers(0, 7), which=st.integers(0, len(LAYOUTS) - 1), seed=st.integers(0, 99))
def test_encoded_sequences_are_what_the_grammar_allows_and_decode_leniently_as_complete(K, T, which, seed):
    codes = make_codes(K, T, seed=seed)
    layout = TokenLayout.for_codes(codes, **LAYOUTS[which])
    tok = layout.encode(codes)
    if layout.flat:
        state = LayoutState(layout)
        for t in tok.tokens[0, :int(tok.lengths[0])].tolist():
            state.feed(t)
        known = layout.add_eos or layout.pattern == "delay" and K > 1 and T > 0
        assert state.frames == (T if known else None) and state.ended == layout.add_eos
    # whole encoded sequence + trailing padding decodes as complete and exact
    pad = layout.special_id("pad")
    padded = torch.cat([tok.tokens, torch.full((*tok.tokens.shape[:-1], 3), pad)], -1)
    back, (rep,) = decode_lenient(layout, padded)
    assert torch.equal(back.codes[0, :, :T], codes.codes[0, :, :T]) and int(back.lengths[0]) == T
    assert rep.frames == T and rep.dropped == 0
    assert rep.complete and rep.problem is None  # padding terminates a layout without eos
    assert back.model_id == "m@1" and back.frame_rate == 12.5 and back.n_semantic == 1


@settings(max_examples=40, deadline=None)
@given(K=st.integers(1, 4), which=st.integers(0, len(FLAT_LAYOUTS) - 1), seed=st.integers(0, 10_000),
       L=st.integers(1, 40))
def test_any_sequence_sampled_under_the_constraint_decodes(K, which, seed, L):
    codes = make_codes(K, 1)
    layout = TokenLayout.for_codes(codes, **FLAT_LAYOUTS[which])
    g = torch.Generator().manual_seed(seed)
    state = LayoutState(layout)
    ids = []
    for _ in range(L):  # a random "model": uniform over the allowed ids, specials favoured
        mask = state.allowed()
        weights = mask.float() * (1 + 20 * (torch.arange(mask.numel()) >= layout.special_id("pad")))
        t = int(torch.multinomial(weights, 1, generator=g))
        state.feed(t)
        ids.append(t)
    back, (rep,) = decode_lenient(layout, torch.tensor(ids))
    assert rep.problem is None or rep.problem.startswith("no terminator")
    if state.ended:  # a finished sample is also strictly decodable
        n = ids.index(layout.special_id("eos")) + 1 if layout.add_eos else ids.index(layout.special_id("pad"))
        strict = layout.decode(LMTokens(torch.tensor([ids[:n]]), torch.tensor([n])))
        T = int(back.lengths[0])
        assert int(strict.lengths[0]) == T and torch.equal(strict.codes[..., :T], back.codes[..., :T]) and rep.complete
    # re-encoding what was kept gives back a prefix of the sample
    again = layout.encode(back).tokens[0].tolist()
    body = [t for t in again if t not in (layout.special_id("bos"), layout.special_id("eos"), layout.special_id("pad"))]
    start = int(layout.add_bos)
    if layout.pattern == "flatten" or K == 1:
        assert ids[start:start + len(body)] == body


def test_allowed_next_follows_the_delay_pattern():
    codes = make_codes(3, 2, sizes=(4, 4, 4))
    lay = TokenLayout.for_codes(codes, pattern="delay", add_bos=True, add_eos=True)
    hole, eos, bos = lay.special_id("hole"), lay.special_id("eos"), lay.special_id("bos")
    ids = lay.encode(codes).tokens[0].tolist()
    # bos | c0 h h | c0 c1 h | hole c1 c2 | hole hole c2 | eos
    assert ids[0] == bos and ids[2:4] == [hole, hole] and ids[7] == hole and ids[10:12] == [hole, hole]
    assert ids[-1] == eos and len(ids) == 1 + (2 + 2) * 3 + 1
    assert allowed_next(lay, []).nonzero().flatten().tolist() == [bos]
    first = allowed_next(lay, ids[:1]).nonzero().flatten().tolist()
    assert first == list(range(0, 4)) + [eos]  # codebook 0 or an empty item
    assert allowed_next(lay, ids[:2]).nonzero().flatten().tolist() == [hole]
    assert allowed_next(lay, ids[:7]).nonzero().flatten().tolist() == list(range(0, 4)) + [hole]
    assert allowed_next(lay, ids[:8]).nonzero().flatten().tolist() == list(range(4, 8))
    assert allowed_next(lay, ids[:10]).nonzero().flatten().tolist() == [hole]
    assert allowed_next(lay, ids[:-1]).nonzero().flatten().tolist() == [eos]
    assert allowed_next(lay, ids).nonzero().flatten().tolist() == [lay.special_id("pad")]
    with pytest.raises(CodesError, match="not allowed at position 2"):
        allowed_next(lay, ids[:2] + [5])


def test_lenient_decode_cuts_truncated_and_corrupted_samples_to_whole_frames():
    codes = make_codes(2, 5, sizes=(6, 6))
    for kw in (dict(pattern="flatten", add_bos=True, add_eos=True), dict(pattern="delay", add_eos=True)):
        lay = TokenLayout.for_codes(codes, **kw)
        ids = lay.encode(codes).tokens[0]
        cut = ids[:lay.frame_tokens(5) - 4]  # stopped early: no eos, last frames unfinished
        back, (rep,) = decode_lenient(lay, cut)
        assert not rep.complete and "no terminator" in rep.problem and rep.dropped > 0
        T = rep.frames
        assert 0 < T < 5 and torch.equal(back.codes[0], codes.codes[0, :, :T])
        bad = ids.clone()
        bad[1 + 2 * 2 + int(kw.get("add_bos", False))] = lay.special_id("bos")  # garbage in frame 2-ish
        back, (rep,) = decode_lenient(lay, bad)
        assert not rep.complete and "cut there" in rep.problem
        assert torch.equal(back.codes[0], codes.codes[0, :, :rep.frames]) and rep.frames < 5
        with pytest.raises(CodesError):
            lay.decode(LMTokens(bad[None], torch.tensor([bad.numel()])))


def test_parallel_grid_lenient_decode():
    codes = make_codes(3, 4)
    lay = TokenLayout.for_codes(codes, pattern="delay", flat=False)
    grid = lay.encode(codes).tokens[0]
    back, (rep,) = decode_lenient(lay, grid[:, :-2])  # two columns short
    assert rep.frames == 2 and torch.equal(back.codes[0], codes.codes[0, :, :2])
    full, (rep,) = decode_lenient(lay, grid)
    assert rep.complete and torch.equal(full.codes, codes.codes)


def test_logits_processor_masks_a_larger_vocabulary_and_tracks_rows():
    codes = make_codes(2, 3, sizes=(5, 5))
    lay = TokenLayout.for_codes(codes, pattern="delay", add_bos=True, add_eos=True, offset=10)
    proc = LayoutLogitsProcessor(lay, start=2)  # two text-prompt ids before the layout's sequence
    ids = lay.encode(codes).tokens
    prompt = torch.tensor([[1, 2]])
    for n in range(1, ids.shape[1]):
        inp = torch.cat([prompt, ids[:, :n]], 1).repeat(2, 1)
        scores = proc(inp, torch.zeros(2, lay.vocab_size + 50))
        allowed = torch.isfinite(scores[0])
        assert bool(allowed[ids[0, n]]) and not allowed[lay.vocab_size:].any() and not allowed[:10].any()
        assert torch.equal(allowed, allowed_next(lay, ids[0, :n], lay.vocab_size + 50))
    # a reordered row (beam search) is re-walked, not fed on top of the old state
    other = torch.cat([prompt, ids[:, :1]], 1)
    scores = proc(other, torch.zeros(1, lay.vocab_size + 50))
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == list(range(10, 15)) + [lay.special_id("eos")]
