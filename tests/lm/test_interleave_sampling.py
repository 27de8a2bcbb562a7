"""Constrained sampling of speech-text interleaved sequences: the grammar accepts what `interleave`
makes, rejects what it never makes, and a random tiny GPT-2 under the processor only writes
sequences that `split` parses."""
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechtok import Codes
from speechtok.lm.interleave import SPECIAL, SPEECH, TEXT, InterleaveError, Interleaver
from speechtok.lm.interleave_sampling import (InterleaveLogitsProcessor, InterleaveState,
                                              interleave_logits_processor)
from speechtok.lm.words import Word

transformers = pytest.importorskip("transformers")

VOCAB_WORDS = "the cat sat on a mat while every quick brown fox jumped over lazy dogs in being modern".split()
# (layout kw, codebook sizes, gap between text ids and the layout's offset)
LAYOUTS = [(dict(pattern="flatten"), (6, 4), 0),
           (dict(pattern="flatten", add_bos=True, add_eos=True), (5, 4, 3), 3),
           (dict(pattern="delay", add_bos=True, add_eos=True), (6, 4), 2),
           (dict(pattern="delay", add_eos=True), (5, 4, 3), 0),
           (dict(pattern="delay"), (6, 4), 1)]
IDS = [f"{kw['pattern']}{'+bos' if kw.get('add_bos') else ''}{'+eos' if kw.get('add_eos') else ''}-K{len(s)}"
       for kw, s, _ in LAYOUTS]


@pytest.fixture(scope="module")
def tok():
    """A small real Hugging Face tokenizer (word level: 21 ids, so random text stays short)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", ",", "."] + VOCAB_WORDS)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t)


def make_codes(seed, sizes, T=30, durations=False):
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, s, (1, T), generator=g) for s in sizes], 1)
    d = torch.randint(1, 3, (1, T), generator=g) if durations else None
    return Codes.from_tensor(raw, frame_rate=25.0, codebook_sizes=sizes, sample_rate=16000, model_id="toy@1",
                             durations=d)


def make_words(seed, seconds):
    rng = random.Random(seed)
    n = rng.randint(3, 9)
    bounds = sorted(rng.uniform(0, seconds) for _ in range(2 * n))
    return [Word(rng.choice(VOCAB_WORDS) + rng.choice(["", "", ","]), bounds[2 * i], bounds[2 * i + 1])
            for i in range(n)]


def interleaver(tok, which, **recipe):
    kw, sizes, gap = LAYOUTS[which]
    return Interleaver.for_tokenizer(tok, make_codes(0, sizes), offset=len(tok) + gap, **kw, **recipe)


def walk(spec, ids, check_mask=False):
    """Feed ``ids`` one by one, checking `allows`/`allowed` agree at each step; returns the state."""
    state = InterleaveState(spec)
    for t in ids:
        mask = state.allowed()
        assert state.allows(t) and bool(mask[t]), (state.pos, t, ids)
        if check_mask:
            assert mask.tolist() == [state.allows(i) for i in range(spec.vocab_size)]
        state.feed(t)
    return state


# --------------------------------------------------------------------------- what interleave makes
@pytest.mark.parametrize("which", range(len(LAYOUTS)), ids=IDS)
def test_every_interleaved_sequence_is_accepted(tok, which):
    base = interleaver(tok, which)
    lay = base.spec.layout
    recipes = [dict(mean_text_words=2.0, mean_speech_words=2.0)] * 6 + [
        dict(mode="alternate", first="speech"), dict(mode="alternate", first="text", span_words=2),
        dict(mode="text"), dict(mode="speech")]
    spans = set()
    for seed, recipe in enumerate(recipes):
        codes = make_codes(seed, lay.codebook_sizes, durations=seed % 2 == 1)
        it = base.with_(**recipe)
        out = it.interleave(codes, make_words(seed, 1.2), seed=seed)
        state = walk(it.spec, out.ids.tolist(), check_mask=seed == 0)
        assert state.spans == len(out.spans)
        spans.update((sp.modality, i > 0) for i, sp in enumerate(out.spans))
        if lay.add_eos:
            assert state.ended
        else:  # the sequence may end here: the terminator is pad
            assert state.can_end() and not state.ended and state.allowed()[lay.special_id("pad")]
            state.feed(lay.special_id("pad"))
            assert state.ended and state.allowed().nonzero().flatten().tolist() == [lay.special_id("pad")]
    assert spans == {("text", False), ("text", True), ("speech", False), ("speech", True)}


@pytest.mark.parametrize("which,mode", [(0, "random"), (1, "random"), (1, "text"), (2, "text"),
                                        (2, "random")])
def test_utterance_without_words_is_one_empty_span(tok, which, mode):
    it = interleaver(tok, which, mode=mode)
    out = it.interleave(make_codes(0, it.spec.layout.codebook_sizes), [])
    assert len(out.spans) == 1
    walk(it.spec, out.ids.tolist())
    it.split(out.ids)


def test_grammar_rejects_what_interleave_never_makes(tok):
    it = interleaver(tok, 2)  # delay, K=2, bos + eos, a gap of 2 ids below the offset
    spec, lay = it.spec, it.spec.layout
    bos, eos, pad, hole = (lay.special_id(n) for n in ("bos", "eos", "pad", "hole"))
    T_, S_ = spec.marker_id("text"), spec.marker_id("speech")
    c0, c1 = lay.offset, lay.offset + 6  # a code of codebook 0 / 1
    # 2 frames: columns (c0, hole) (c0, c1) (hole, c1)
    speech = [S_, c0, hole, c0 + 1, c1, hole, c1 + 1]
    good = [bos] + speech + [T_, 3, 4] + speech + [eos]
    walk(spec, good, check_mask=True)
    assert [s.modality for s in it.split(good)] == ["speech", "text", "speech"]
    walk(spec, [bos, S_, eos])  # an empty sole span (an utterance without words)
    walk(spec, [bos, T_, eos])

    def rejected(prefix, t):
        state = walk(spec, prefix)
        assert not state.allows(t) and not state.allowed(spec.vocab_size + 4)[t]
        with pytest.raises(InterleaveError, match="not allowed"):
            state.feed(t)

    rejected([], T_)                                    # no bos
    for t in (eos, 3, c0, pad):
        rejected([bos], t)                              # a marker must come first
    rejected([bos, T_], S_)                             # no switch out of an empty span
    rejected([bos, T_, 3, S_], eos)                     # ... nor an empty span that is not the sole one
    rejected([bos, T_, 3, S_], T_)
    rejected([bos, T_, 3], T_)                          # the same modality twice
    rejected(good[:8], S_)
    for t in (len(tok), len(tok) + 1, c0, hole, pad, bos, spec.vocab_size):
        rejected([bos, T_, 3], t)                       # gap ids, speech ids, specials, unknown ids in text
    rejected([bos, S_], 3)                              # text in speech
    rejected([bos, S_], hole)                           # the grid starts with a code
    for n in range(2, 7):                               # mid-grid: no marker, no eos
        rejected([bos] + speech[:n], T_)
        rejected([bos] + speech[:n], eos)
    rejected([bos] + speech[:3], c1)                    # the delay pattern still holds inside a span
    rejected(good, eos)                                 # after the end only pad
    walk(spec, good + [pad, pad])
    # split agrees where it checks the same thing
    for bad in ([bos, T_, 3, S_] + speech[1:5] + [T_, 3, eos], [bos, T_, 3, len(tok), eos]):
        with pytest.raises(InterleaveError):
            it.split(bad)


# --------------------------------------------------------------------------- force
def test_force_restricts_what_is_sampled_not_what_was_written(tok):
    it = interleaver(tok, 3)  # delay, K=3, eos
    spec, lay = it.spec, it.spec.layout
    T_, S_, eos = spec.marker_id("text"), spec.marker_id("speech"), lay.special_id("eos")
    prompt = it.with_(mode="text").interleave(make_codes(0, lay.codebook_sizes), make_words(1, 1.2)).ids[:-1]
    state = walk(spec, prompt.tolist())  # a text prompt walks under any force
    assert state.allowed(force="speech").nonzero().flatten().tolist() == [S_]
    as_text = state.allowed(force="text")
    assert as_text[:len(tok)].all() and as_text[[T_, eos]].tolist() == [False, True]
    assert walk(spec, [T_]).allowed(force="speech")[:len(tok)].all()  # an empty first span cannot switch
    speech = it.with_(mode="speech").interleave(make_codes(2, lay.codebook_sizes), make_words(2, 1.2)).ids[:-1]
    state = walk(spec, speech.tolist())
    assert state.allowed(force="text").nonzero().flatten().tolist() == [T_]
    assert state.allowed(force="speech").nonzero().flatten().tolist() == [eos]  # the grid is complete
    mid = walk(spec, speech[:5].tolist())  # mid-frame: the span goes on whatever the force
    assert torch.equal(mid.allowed(force="text"), mid.allowed()) and not mid.allowed()[T_]
    with pytest.raises(ValueError, match="force"):
        InterleaveLogitsProcessor(spec, force="audio")


# --------------------------------------------------------------------------- generate
@pytest.fixture
def one_thread():
    """A tiny model on busy CPUs: one intra-op thread is ~10x faster (no spinning); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_lm(vocab, seed):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=256, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                  eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


class Boost:
    """Adds ``bias [V]`` to the logits (runs before the constraint): markers / terminator made likely."""

    def __init__(self, bias):
        self.bias = bias

    def __call__(self, input_ids, scores):
        return scores + self.bias


def generate(it, seed, prompt, boost_marker, boost_term, n_new, force=None, rows=4):
    spec, lay = it.spec, it.spec.layout
    V = spec.vocab_size + 5  # a model vocabulary larger than the spec's
    lm = _tiny_lm(V, seed)
    term = lay.special_id("eos" if lay.add_eos else "pad")
    bias = torch.zeros(V)
    bias[[spec.marker_id("text"), spec.marker_id("speech")]] = boost_marker
    bias[term] = boost_term
    bias[spec.vocab_size:] = 5.0  # outside the vocabulary: must be masked anyway
    procs = interleave_logits_processor(spec, force=force)
    procs.insert(0, Boost(bias))
    inp = torch.tensor([prompt] * rows, dtype=torch.long).reshape(rows, len(prompt))
    return lm.generate(inp, attention_mask=torch.ones_like(inp), do_sample=True, max_new_tokens=n_new,
                       logits_processor=procs, pad_token_id=lay.special_id("pad"), eos_token_id=term)


def check_sample(it, row, stats):
    """``row`` is in the grammar; finished: strict split gives every span; unfinished: lenient split
    gives every span, the last speech one possibly cut to whole frames (or dropped if it has none)."""
    spec, lay = it.spec, it.spec.layout
    state = walk(spec, row)
    marks = {spec.marker_id("text"): "text", spec.marker_id("speech"): "speech"}
    mods = [marks[t] for t in row if t in marks]
    segs = it.split(row, lenient=True)
    got = [s.modality for s in segs]
    # what interleave makes: modalities alternate, no empty span but a sole one (or an unfinished last one)
    assert all(a != b for a, b in zip(mods, mods[1:])), mods
    done = segs if state.ended and len(segs) > 1 else segs[:-1]
    assert all(s.end > s.start for s in done), [(s.start, s.end) for s in segs]
    if state.ended:
        n = row.index(state.term) + int(lay.add_eos)
        strict = it.split(row[:n])
        assert [s.modality for s in strict] == mods == got and all(s.complete for s in segs)
        assert [(s.start, s.end) for s in strict] == [(s.start, s.end) for s in segs]
        stats["finished"] += 1
    else:
        assert got == mods or got == mods[:-1] and mods[-1] == "speech", (got, mods, row)
        assert all(s.complete for s in segs[:len(mods) - 1])
        stats["cut"] += len(got) < len(mods) or bool(segs) and not segs[-1].complete
    stats["switches"] += max(len(mods) - 1, 0)


@settings(max_examples=60, deadline=None)
@given(which=st.integers(0, len(LAYOUTS) - 1), seed=st.integers(0, 10_000), L=st.integers(1, 80),
       force=st.sampled_from([None, None, "text", "speech"]))
def test_random_walks_under_the_mask_always_split(tok, which, seed, L, force):
    """A random "model": uniform over the allowed ids, markers and terminator favoured."""
    it = interleaver(tok, which)
    spec, lay = it.spec, it.spec.layout
    favoured = torch.ones(spec.vocab_size)
    favoured[[spec.marker_id("text"), spec.marker_id("speech"), lay.special_id("eos"), lay.special_id("pad")]] = 8.0
    g = torch.Generator().manual_seed(seed)
    state, row = InterleaveState(spec), []
    for _ in range(L):
        t = int(torch.multinomial(state.allowed(force=force).float() * favoured, 1, generator=g))
        state.feed(t)
        row.append(t)
    first = int(lay.add_bos)
    if force is not None and len(row) > first:  # nothing of the other modality was ever sampled
        assert row[first] == spec.marker_id(force) and set(spec.modality(torch.tensor(row)).tolist()) <= {
            TEXT if force == "text" else SPEECH, SPECIAL}
    check_sample(it, row, dict(finished=0, cut=0, switches=0))


@pytest.mark.parametrize("which", [1, 2, 4], ids=[IDS[1], IDS[2], IDS[4]])
def test_tiny_model_samples_always_split(tok, which, one_thread):
    it = interleaver(tok, which)
    lay = it.spec.layout
    stats = dict(finished=0, cut=0, switches=0)
    for seed, (marker, term, n_new) in enumerate([(2.0, 0.0, 60), (3.0, -1.0, 80), (1.0, 1.0, 50), (2.5, -3.0, 40)]):
        prompt = [lay.special_id("bos")] if lay.add_bos else [it.spec.marker_id("text" if seed % 2 else "speech")]
        ids = generate(it, seed, prompt, marker, term, n_new)
        assert int(ids.max()) < it.spec.vocab_size
        for row in ids.tolist():
            check_sample(it, row, stats)
    assert stats["finished"] and stats["cut"] and stats["switches"] >= 10, stats


def test_tiny_model_forced_to_speak_after_a_text_prompt(tok, one_thread):
    it = interleaver(tok, 2)
    spec = it.spec
    prompt = it.with_(mode="text").interleave(make_codes(0, spec.layout.codebook_sizes), make_words(3, 1.2)).ids
    prompt = prompt[:-1].tolist()  # [bos] [TEXT] words ... (no eos)
    stats = dict(finished=0, cut=0, switches=0)
    for seed in range(2):
        ids = generate(it, seed, prompt, 3.0, -1.0, 40, force="speech")
        for row in ids.tolist():
            assert row[len(prompt)] == spec.marker_id("speech") and spec.marker_id("text") not in row[len(prompt):]
            check_sample(it, row, stats)
    assert stats["finished"] and stats["switches"] == 8


# --------------------------------------------------------------------------- the processor
def test_processor_masks_outside_the_vocabulary_and_rewalks_changed_rows(tok):
    it = interleaver(tok, 1)  # flatten K=3, bos/eos, a gap of 3 ids
    spec = it.spec
    codes = make_codes(1, spec.layout.codebook_sizes)
    a, b = (it.interleave(codes, make_words(s, 1.2), seed=s).ids.tolist() for s in (1, 2))
    L = min(len(a), len(b))
    assert a[:L] != b[:L]
    proc = InterleaveLogitsProcessor(spec, start=2)  # two ids of another prompt before the sequence
    made = []
    new = proc.rows.new
    proc.rows.new = lambda: made.append(1) or new()
    V = spec.vocab_size + 7

    def masks(rows):
        inp = torch.tensor([[99, 98] + r for r in rows])
        out = torch.isfinite(proc(inp, torch.zeros(len(rows), V)))
        for r, m in zip(rows, out):
            assert torch.equal(m, walk(spec, r).allowed(V)) and not m[spec.vocab_size:].any()
            assert not m[len(tok):spec.layout.offset].any()
        return out

    for n in range(1, L):
        masks([a[:n], b[:n]])
    assert len(made) == 2  # walked incrementally: one state per row
    masks([b[:L], a[:L]])  # beam reordering: both rows walked again
    assert len(made) == 4
    masks([b[:5], a[:5]])  # rows that went back
    masks([b[:6], a[:6]])  # ... and go on incrementally
    assert len(made) == 6
    state = InterleaveState(spec)
    n = next(i + 1 for i, t in enumerate(b) if state.feed(t) or state.span == "text" and state.span_ids)
    S_ = spec.marker_id("speech")
    masks([b[:n]])
    with pytest.raises(InterleaveError):  # [SPEECH] twice: the row raises and its state is forgotten ...
        masks([b[:n] + [S_, S_]])
    masks([b[:n] + [3]])  # ... so this is walked afresh, not on top of the half-fed state
    with pytest.raises(ValueError, match="vocab"):
        proc(torch.tensor([[0, 0, a[0]]]), torch.zeros(1, spec.vocab_size - 1))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_utterance_without_words_keeps_its_speech(tok, which):
    it = interleaver(tok, which, mode="random")
    codes = make_codes(5, it.spec.layout.codebook_sizes)
    out = it.interleave(codes, [])
    (seg,) = it.split(out.ids)
    assert seg.modality == "speech" and torch.equal(seg.content.codes, codes.codes)
    walk(it.spec, out.ids.tolist())
