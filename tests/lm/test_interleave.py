"""Speech-text interleaving: word spans <-> one id sequence, exactly invertible; word sources."""
import json
import random
import re

import numpy as np
import pytest
import torch

from speechtok import Codes
from speechtok.dedup import dedup
from speechtok.lm import TokenLayout
from speechtok.lm.interleave import (INTERLEAVE_FORMAT, SPECIAL, SPEECH, TEXT, InterleaveError, Interleaver,
                                     InterleaveSpec, utterance_seed)
from speechtok.lm.words import Word, WordsError, read_words_tsv, validate_words, words_from_row, write_words_tsv

VOCAB_WORDS = ("the cat sat on a mat while every quick brown fox jumped over lazy dogs in being "
               "comparatively modern printing differs from most arts and crafts").split()


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE (any word is encodable; decode gives back the exact text), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    t.train_from_iterator([" ".join(VOCAB_WORDS), "The cat sat on the mat.", "Printing, in the only sense"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t)


def make_codes(seed, T=60, sizes=(16, 8), frame_rate=25.0, durations=False):
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, s, (1, T), generator=g) for s in sizes], 1)
    d = torch.randint(1, 4, (1, T), generator=g) if durations else None
    return Codes.from_tensor(raw, frame_rate=frame_rate, codebook_sizes=sizes, sample_rate=16000,
                             model_id="toy@1", durations=d)


def make_words(seed, seconds, n=None):
    """Random words with random pauses, inside ``[0, seconds]``."""
    rng = random.Random(seed)
    n = n or rng.randint(3, 12)
    bounds = sorted(rng.uniform(0, seconds) for _ in range(2 * n))
    return [Word(rng.choice(VOCAB_WORDS) + rng.choice(["", "", ",", "."]), bounds[2 * i], bounds[2 * i + 1])
            for i in range(n)]


def norm(text):
    return " ".join(text.split())


def nearest_boundary(edges, f):
    """Brute force of the documented rule: the nearest token boundary, ties to the later one."""
    dist = np.abs(np.asarray(edges, dtype=float) - f)
    return int(np.flatnonzero(dist == dist.min())[-1])


def check_round_trip(it, codes, words, seed):
    out = it.interleave(codes, words, seed)
    spec, n = it.spec, int(codes.lengths[0])
    assert out.ids.dtype == torch.long and out.ids.dim() == 1 and out.modality.shape == out.ids.shape
    assert torch.equal(out.modality, spec.modality(out.ids)) and not (out.modality < 0).any()
    segs = it.split(out.ids)
    assert [s.modality for s in segs] == [sp.modality for sp in out.spans]
    # spans tile the words and the tokens in order
    assert out.spans[0].words[0] == 0 and out.spans[-1].words[1] == len(words)
    assert out.spans[0].steps[0] == 0 and out.spans[-1].steps[1] == n
    for a, b in zip(out.spans[:-1], out.spans[1:]):
        assert a.words[1] == b.words[0] and a.steps[1] == b.steps[0] and a.frames[1] == b.frames[0]
        assert a.modality != b.modality
    d = torch.ones(n, dtype=torch.long) if codes.durations is None else codes.durations[0, :n]
    edges = [0] + torch.cumsum(d, 0).tolist()
    assert out.spans[-1].frames[1] == int(codes.grid_frames()[0])
    for sp, seg in zip(out.spans, segs):
        (w0, w1), (a, b) = sp.words, sp.steps
        assert (seg.start, seg.end) == sp.positions
        if w0 > 0:  # the cut rule, checked independently
            f = (words[w0 - 1].end_s + words[w0].start_s) / 2 * codes.frame_rate
            assert a == nearest_boundary(edges, f)
        if sp.modality == "text":
            assert norm(seg.text) == " ".join(w.text for w in words[w0:w1])
            assert (out.modality[sp.positions[0]:sp.positions[1]] == TEXT).all()
        else:
            assert b > a or w1 == w0  # an empty speech span only when there are no words
            assert seg.codes.model_id == codes.model_id and seg.codes.frame_rate == codes.frame_rate
            assert torch.equal(seg.codes.codes, codes.codes[:, :, a:b])
            assert (out.modality[sp.positions[0]:sp.positions[1]] == SPEECH).all()
    return out, segs


@pytest.mark.parametrize("pattern,bos_eos,durations", [("flatten", False, False), ("flatten", True, True),
                                                       ("delay", True, False), ("delay", False, True)])
def test_round_trip_random_spans(tok, pattern, bos_eos, durations):
    seen = set()
    for seed in range(6):
        codes = make_codes(seed, durations=durations)
        words = make_words(seed, float(codes.seconds()[0]))
        it = Interleaver.for_tokenizer(tok, codes, pattern=pattern, add_bos=bos_eos, add_eos=bos_eos,
                                       mean_text_words=2.0, mean_speech_words=2.0)
        out, _ = check_round_trip(it, codes, words, seed)
        seen.update(sp.modality for sp in out.spans)
        assert (out.ids[0] == it.spec.layout.special_id("bos")) == bos_eos
    assert seen == {"text", "speech"}


@pytest.mark.parametrize("mode", ["text", "speech", "alternate"])
def test_round_trip_fixed_modes(tok, mode):
    codes = make_codes(3)
    words = make_words(3, 2.4, n=7)
    it = Interleaver.for_tokenizer(tok, codes, mode=mode, first="speech", span_words=2)
    out, segs = check_round_trip(it, codes, words, seed=0)
    if mode == "alternate":
        assert [sp.words for sp in out.spans] == [(0, 2), (2, 4), (4, 6), (6, 7)]
        assert [sp.modality for sp in out.spans] == ["speech", "text", "speech", "text"]
    else:
        assert len(segs) == 1 and segs[0].modality == mode
        if mode == "speech":
            assert torch.equal(segs[0].codes.codes, codes.codes)
        else:
            assert norm(segs[0].text) == " ".join(w.text for w in words)
            assert (out.modality[1:] == TEXT).all() and out.modality[0] == SPECIAL


def test_real_units_with_dedup_durations(tok, sample_path):
    """Real speech through a shipped units model, deduplicated (durations), words at real times."""
    import speechtok
    from speechtok.audio import load_audio

    wav, _ = load_audio(sample_path, 16000)
    codes = dedup(speechtok.load("units-mfcc500-16k").encode(wav[None], sample_rate=16000))
    assert codes.durations is not None and int(codes.durations.max()) > 1
    words = [Word("in", 0.0, 0.24), Word("being", 0.24, 0.56), Word("comparatively", 0.56, 1.24),
             Word("modern.", 1.24, 1.66)]
    it = Interleaver.for_tokenizer(tok, codes, mode="alternate", first="text", add_eos=True)
    out, segs = check_round_trip(it, codes, words, seed=0)
    assert [norm(s.text) for s in segs if s.modality == "text"] == ["in", "comparatively"]


def test_speech_span_shorter_than_a_token_becomes_text(tok):
    codes = make_codes(0, T=4, frame_rate=2.0)  # tokens of 0.5 s
    words = [Word("a", 0.0, 0.05), Word("b", 0.06, 0.1), Word("c", 0.11, 0.15), Word("d", 1.2, 1.9)]
    it = Interleaver.for_tokenizer(tok, codes, mode="alternate", first="text")
    out, segs = check_round_trip(it, codes, words, seed=0)
    # "b" would be a speech span of no token: it joins the text around it
    assert [(s.modality, s.words) for s in out.spans] == [("text", (0, 3)), ("speech", (3, 4))]


def test_cut_rule_rounds_pause_midpoints_to_the_nearest_boundary(tok):
    words = [Word("a", 0.0, 0.2), Word("b", 0.3, 0.5), Word("c", 0.62, 0.9)]  # pause midpoints 0.25 s, 0.56 s
    codes = make_codes(0, T=10, frame_rate=10.0)
    it = Interleaver.for_tokenizer(tok, codes, mode="alternate", first="text")
    assert [sp.steps for sp in it.plan(codes, words)] == [(0, 3), (3, 6), (6, 10)]  # 2.5 -> 3 (half up), 5.6 -> 6
    runs = codes.with_(codes=codes.codes[:, :, :5], lengths=torch.tensor([5]),
                       durations=torch.full((1, 5), 2, dtype=torch.long))  # boundaries at frames 0, 2, ..., 10
    spans = it.plan(runs, words)
    assert [sp.steps for sp in spans] == [(0, 1), (1, 3), (3, 5)] and [sp.frames for sp in spans] == [(0, 2), (2, 6),
                                                                                                      (6, 10)]


def test_text_spans_carry_the_leading_space_of_a_word_inside_a_sentence(tok):
    codes = make_codes(0)
    words = [Word(w, 0.3 * i + 0.05, 0.3 * i + 0.25) for i, w in enumerate(["the", "cat", "sat", "on"])]
    for leading in (True, False):
        it = Interleaver.for_tokenizer(tok, codes, mode="alternate", first="speech", span_words=1,
                                       leading_space=leading)
        out = it.interleave(codes, words)
        texts = [out.ids[sp.positions[0]:sp.positions[1]].tolist() for sp in out.spans if sp.modality == "text"]
        space = " " if leading else ""
        assert texts == [tok.encode(space + "cat", add_special_tokens=False),
                         tok.encode(space + "on", add_special_tokens=False)]
        assert [s.text for s in it.split(out.ids) if s.text is not None] == [space + "cat", space + "on"]
    first = Interleaver.for_tokenizer(tok, codes, mode="text").interleave(codes, words)
    assert first.ids[1:].tolist() == tok.encode("the cat sat on", add_special_tokens=False)


def test_deterministic_by_seed_and_span_lengths_follow_the_recipe(tok):
    codes = make_codes(1, T=3000, frame_rate=100.0)
    words = [Word(VOCAB_WORDS[i % len(VOCAB_WORDS)], 0.1 * i + 0.02, 0.1 * i + 0.08) for i in range(300)]
    it = Interleaver.for_tokenizer(tok, codes, mean_text_words=3.0, mean_speech_words=6.0)
    a, b = it.interleave(codes, words, seed=5), it.interleave(codes, words, seed=5)
    assert torch.equal(a.ids, b.ids) and a.spans == b.spans
    assert len({tuple(it.interleave(codes, words, seed=s).ids.tolist()) for s in range(4)}) == 4
    spans = [sp for s in range(10) for sp in it.plan(codes, words, seed=s)[1:-1]]  # inner spans: not cut short
    for modality, mean in (("text", 3.0), ("speech", 6.0)):
        lengths = [sp.words[1] - sp.words[0] for sp in spans if sp.modality == modality]
        assert len(lengths) > 50 and abs(np.mean(lengths) - mean) < 0.2 * mean
    assert utterance_seed(0, "LJ001-0001") == utterance_seed(0, "LJ001-0001") != utterance_seed(0, "LJ001-0002")


def test_markers_never_collide(tok):
    codes = make_codes(2)
    for pattern in ("flatten", "delay"):
        it = Interleaver.for_tokenizer(tok, codes, pattern=pattern, add_bos=True, add_eos=True)
        spec, lay = it.spec, it.spec.layout
        marks = {spec.marker_id("text"), spec.marker_id("speech")}
        specials = {lay.special_id(s) for s in ("pad", "bos", "eos", "hole")}
        assert len(marks) == 2 and not marks & specials and spec.vocab_size == lay.vocab_size + 2
        assert min(marks) >= lay.offset + sum(lay.codebook_sizes) >= lay.offset >= len(tok)
        assert max(marks) == spec.vocab_size - 1
        assert (spec.modality(torch.arange(len(tok))) == TEXT).all()
        out = it.interleave(codes, make_words(2, 2.4), seed=1)
        assert int(out.ids.max()) < spec.vocab_size and int(out.ids.min()) >= 0
        assert set(out.ids[out.modality == SPECIAL].tolist()) <= marks | specials
    with pytest.raises(InterleaveError, match="collide"):
        Interleaver.for_tokenizer(tok, codes, offset=len(tok) - 1)


def test_spec_dict_round_trips_and_refuses_others(tok):
    codes = make_codes(0)
    it = Interleaver.for_tokenizer(tok, codes, pattern="delay", add_eos=True, mode="alternate", span_words=3)
    d = json.loads(json.dumps(it.to_dict()))
    assert d["format"] == INTERLEAVE_FORMAT and d["format_version"] == 1 and d["layout"]["format"] == "speechtok.layout"
    assert d["text_tokenizer"]["vocab_size"] == len(tok) and d["vocab_size"] == it.spec.vocab_size
    back = Interleaver.from_dict(d, tok)
    assert back.spec == it.spec
    words = make_words(0, 2.4)
    assert torch.equal(back.interleave(codes, words).ids, it.interleave(codes, words).ids)
    bad = [(dict(d, format="speechtok.layout"), "not a speechtok"), (dict(d, format_version=2), "newer"),
           (dict(d, markers={"[TEXT]": 1, "[SPEECH]": 2}), "do not match"), (dict(d, extra=1), "unknown"),
           (dict(d, cut="word-start"), "cut rule"), (dict(d, spans=dict(d["spans"], mode="zigzag")), "mode"),
           (dict(d, layout=dict(d["layout"], format_version=9)), "newer")]
    for meta, msg in bad:
        with pytest.raises(InterleaveError, match=msg):
            InterleaveSpec.from_dict(meta, "data/interleave.json")
    other = Interleaver.for_tokenizer(tok, TokenLayout((4,), offset=len(tok)))
    from tokenizers import Tokenizer

    other_tok = type(tok)(tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()))  # a copy
    other_tok.add_tokens(["<extra>"])
    with pytest.raises(InterleaveError, match="ids"):
        Interleaver.from_dict(other.to_dict(), other_tok)
    tampered = dict(other.to_dict(), text_tokenizer=dict(other.to_dict()["text_tokenizer"], vocab_sha256="0" * 64))
    with pytest.raises(InterleaveError, match="vocabulary differs"):
        Interleaver.from_dict(tampered, tok)


def test_split_errors_and_lenient(tok):
    codes = make_codes(4)
    words = [Word(w, 0.3 * i + 0.05, 0.3 * i + 0.25) for i, w in enumerate(VOCAB_WORDS[:6])]
    for pattern in ("flatten", "delay"):
        it = Interleaver.for_tokenizer(tok, codes, pattern=pattern, add_eos=True, mode="alternate", first="text")
        spec = it.spec
        out = it.interleave(codes, words)
        ids = out.ids.tolist()
        with pytest.raises(InterleaveError, match="marker"):
            it.split(ids[1:])  # no marker before the first text
        with pytest.raises(InterleaveError, match="not an id of this vocabulary"):
            it.split(ids[:3] + [spec.vocab_size] + ids[3:])
        sp = out.spans[1]  # a speech span
        with pytest.raises(InterleaveError, match=r"text token .* inside a \[SPEECH\]"):
            it.split(ids[:sp.positions[0]] + [5] + ids[sp.positions[0]:])
        with pytest.raises(InterleaveError, match=r"speech code .* inside a \[TEXT\]"):
            it.split(ids[:1] + [spec.layout.offset] + ids[1:])
        with pytest.raises(InterleaveError, match="eos"):
            it.split(ids[:-1])
        full = it.split(ids)
        K, last = 2, out.spans[-1]
        assert last.modality == "speech" and last.positions[1] - last.positions[0] > 13
        for extra in (3, 13):
            frames = max(extra // K - (K - 1 if pattern == "delay" else 0), 0)  # whole frames in `extra` ids
            cut = ids[:last.positions[0] + extra]  # an unfinished last speech span, no eos
            with pytest.raises(InterleaveError):
                it.split(cut)
            kept = it.split(cut, lenient=True)
            assert len(kept) == len(full) - int(frames == 0) and all(s.complete for s in kept[:len(full) - 1])
            for a, b in zip(kept[:len(full) - 1], full):
                assert a.modality == b.modality and (a.text == b.text if a.text is not None
                                                     else torch.equal(a.codes.codes, b.codes.codes))
            if frames:  # the whole frames of the unfinished span
                assert not kept[-1].complete and torch.equal(kept[-1].codes.codes, full[-1].codes.codes[..., :frames])
        broken = ids[:out.spans[1].positions[0]] + [3] + ids[out.spans[1].positions[0]:]  # a text id in speech
        assert [s.modality for s in it.split(broken, lenient=True)] == ["text"]
        assert len(it.split(ids + [spec.layout.special_id("pad")] * 3, lenient=True)) == len(full)


def test_collate_pads_with_the_layout(tok):
    codes = make_codes(5)
    it = Interleaver.for_tokenizer(tok, codes, pattern="delay")
    items = [it.interleave(codes, make_words(s, 2.4), seed=s) for s in range(3)]
    batch = it.collate(items)
    lay = it.spec.layout
    assert torch.equal(batch.lengths, torch.tensor([len(i.ids) for i in items]))
    labels = lay.labels(batch)
    ignored = (batch.tokens == lay.special_id("pad")) | (batch.tokens == lay.special_id("hole"))
    assert ignored.any() and ((labels == -100) == ignored).all()
    for b, item in enumerate(items):
        assert torch.equal(batch.tokens[b, :len(item.ids)], item.ids)


# --------------------------------------------------------------------------- words
def test_words_from_manifest_row_inline_and_tsv(tmp_path):
    rows = [[0.0, 0.24, "in"], [0.24, 0.56, "being"], [0.6, 1.24, "comparatively"]]
    inline = words_from_row({"id": "u1", "duration": 1.9, "words": rows})
    assert inline == [Word(w, a, b) for a, b, w in rows]
    (tmp_path / "sub").mkdir()
    write_words_tsv(tmp_path / "sub" / "u1.words.tsv", inline)
    (tmp_path / "sub" / "u2.words.tsv").write_text("0.10\t0.30\thello\n\n0.30\t0.90\tworld\n")
    assert words_from_row({"id": "u1", "words": "sub/u1.words.tsv"}, base=tmp_path) == inline
    assert words_from_row({"words": "sub/u2.words.tsv"}, base=tmp_path) == [Word("hello", 0.1, 0.3),
                                                                            Word("world", 0.3, 0.9)]
    with pytest.raises(WordsError, match="after the audio"):
        words_from_row({"id": "u2", "duration": 0.5, "words": "sub/u2.words.tsv"}, base=tmp_path)
    with pytest.raises(WordsError, match="no 'words'"):
        words_from_row({"id": "u3", "phones": "x.phones.tsv"})
    (tmp_path / "bad.words.tsv").write_text("0.1\t0.2\n")
    with pytest.raises(WordsError, match=r"bad.words.tsv:1"):
        read_words_tsv(tmp_path / "bad.words.tsv")
    for words, msg in [([[0.0, 0.5, "a"], [0.4, 0.8, "b"]], "before the previous"),
                       ([[0.5, 0.2, "a"]], "after it ends"),
                       ([[-0.1, 0.2, "a"]], ">= 0"), ([[0.1, 0.2, " "]], "no text"),
                       ([[0.1, float("nan"), "a"]], "finite"), ([[0.1, 0.2]], r"\[start_s, end_s, word\]")]:
        with pytest.raises(WordsError, match=msg):
            validate_words(words)


def test_words_past_the_codes_are_refused(tok):
    codes = make_codes(0, T=25)  # 1 s
    it = Interleaver.for_tokenizer(tok, codes)
    with pytest.raises(InterleaveError, match="not of the same utterance"):
        it.interleave(codes, [Word("a", 0.2, 0.5), Word("b", 1.5, 2.0)])


def test_whisper_word_timestamps(tok, sample_path):
    pytest.importorskip("faster_whisper")
    from speechtok.benchmarks.asr import WhisperModelNotFound
    from speechtok.lm.words import WhisperWords

    try:
        ww = WhisperWords("whisper:tiny.en", cpu_threads=2)
    except WhisperModelNotFound as e:
        pytest.skip(str(e))
    import soundfile as sf

    wav, sr = sf.read(str(sample_path), dtype="float32")
    duration = len(wav) / sr
    words = ww.words(torch.from_numpy(wav), sr)  # tensor at the file's rate (resampled inside)
    assert len(words) >= 3
    prev = 0.0
    for w in words:
        assert 0.0 <= prev <= w.start_s <= w.end_s <= duration and w.text == w.text.strip() != ""
        prev = w.end_s
    assert words[-1].end_s > 0.5 * duration  # timestamps spread over the speech, not collapsed
    said = [re.sub(r"[^a-z]", "", w.text.lower()) for w in words]
    truth = "in being comparatively modern".split()
    assert sum(w in said for w in truth) >= 3, said
    assert [w.text for w in ww.words(sample_path)] == [w.text for w in words]  # a file, read at 16 kHz
    codes = make_codes(0, T=int(duration * 50), frame_rate=50.0)
    it = Interleaver.for_tokenizer(tok, codes, mode="alternate", first="speech")
    check_round_trip(it, codes, words, seed=0)
