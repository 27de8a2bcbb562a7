"""Speech-text interleaving (SpiRit-LM, GLM-4-Voice style): one utterance as word-level spans that
alternate between text tokens and speech tokens, and the exact inverse (`Interleaver.split`).

Vocabulary (one id space, ``vocab_size = layout.vocab_size + 2``)::

    [0, V_text)                          the text tokenizer's ids (any Hugging Face tokenizer, V_text = len(tok))
    [V_text, layout.offset)              unused (a gap is allowed: the layout's offset must be >= V_text)
    [layout.offset, layout.vocab_size)   the `TokenLayout`'s speech codes, then its specials (pad, bos, eos, hole)
    layout.vocab_size + 0                the marker [TEXT]: a text span follows
    layout.vocab_size + 1                the marker [SPEECH]: a speech span follows

A sequence is ``[bos]? ([TEXT] text ids | [SPEECH] speech ids)* [eos]?`` (bos/eos when the layout has
``add_bos`` / ``add_eos``). Every span starts with its marker, so the modality of each id is a function
of the id alone (`InterleaveSpec.modality`).

From words to spans: a span is a run of consecutive words. Modes (``mode``):
    ``random``     SpiRit-LM's recipe: at each word boundary the modality switches with probability
                   ``1 / mean_<modality>_words`` (span lengths are geometric with those means); the
                   first modality is ``first`` ("random": a fair coin). Deterministic given ``seed``
                   (Python's `random.Random`; `utterance_seed` makes one seed per utterance).
    ``alternate``  fixed spans of ``span_words`` words, alternating, starting with ``first``.
    ``text``       one text span (all words); ``speech``: one speech span (all frames).

From words to frames (`speechtok.lm.words.word_cuts`): the cut between word ``i-1`` and word ``i`` is
the middle of the pause between them, rounded to the nearest token boundary of the frame grid (half
up; with durations the boundaries are their cumsum); the spans tile the utterance's tokens in order
(silence before/after the words belongs to the first/last span). A speech span whose words round to
no token is emitted as text (merged with neighbouring text).

Text of a span: ``" ".join(words)``, with a leading space when the span does not start the utterance
and ``leading_space`` is True (GPT-2/BPE convention: a word inside a sentence carries its space);
tokenized alone with ``add_special_tokens=False``. Speech of a span: the layout's ids for the span's
tokens, the span encoded on its own (for ``delay`` each span is delayed on its own, with its holes);
the layout must be flat. Durations (after dedup/BPE) are not in the ids: split gives one frame per token.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence, Union

import torch

from ..codes import Codes, CodesError
from ..formats import check_format, get_field, safe_text
from .layout import SPECIALS, LayoutError, LMTokens, TokenLayout
from .words import Word, WordsError, token_edges, validate_words, word_cuts

INTERLEAVE_FORMAT = "speechtok.interleave"
INTERLEAVE_FORMAT_VERSION = 1
MARKERS = ("text", "speech")
MARKER_NAMES = {"text": "[TEXT]", "speech": "[SPEECH]"}
MODES = ("random", "alternate", "text", "speech")
FIRSTS = ("random", "text", "speech")
CUT_RULE = "pause-midpoint-nearest-token-boundary"
TOKENIZER_KEYS = ("name", "vocab_size", "vocab_sha256")
SPAN_KEYS = ("mode", "first", "mean_text_words", "mean_speech_words", "span_words")
# per-token modality codes (`InterleaveSpec.modality`); UNKNOWN marks ids outside the vocabulary
TEXT, SPEECH, SPECIAL, UNKNOWN = 0, 1, 2, -1


class InterleaveError(LayoutError):
    """An interleaved sequence or its saved description is malformed, or does not fit the data."""


def text_vocab_sha256(tokenizer) -> str:
    """Fingerprint of a Hugging Face tokenizer's vocabulary (token -> id, added tokens included)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def utterance_seed(seed: int, key: str) -> int:
    """A per-utterance seed from a base ``seed`` and the utterance's id (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{key}".encode("utf-8")).digest()[:8], "little")


@dataclass(frozen=True)
class InterleaveSpec:
    """What made an interleaved dataset: vocabulary (layout + text tokenizer) and the span recipe.
    Saved with `to_dict` (format ``speechtok.interleave``, version 1); see the module docstring."""

    layout: TokenLayout
    text_vocab_size: int
    text_tokenizer: str = ""
    text_vocab_sha256: str = ""
    leading_space: bool = True
    mode: str = "random"
    first: str = "random"
    mean_text_words: float = 8.0
    mean_speech_words: float = 8.0
    span_words: int = 1

    def __post_init__(self):
        if not isinstance(self.layout, TokenLayout) or not self.layout.flat:
            raise InterleaveError("interleaving needs a flat (single-stream) TokenLayout")
        if isinstance(self.text_vocab_size, bool) or not isinstance(self.text_vocab_size, int) \
                or self.text_vocab_size < 1:
            raise InterleaveError(f"text_vocab_size must be a positive int, got {self.text_vocab_size!r}")
        if self.layout.offset < self.text_vocab_size:
            raise InterleaveError(f"layout offset {self.layout.offset} < text vocab size {self.text_vocab_size}: "
                                  "speech ids would collide with text ids (make the layout with offset >= it)")
        if self.mode not in MODES or self.first not in FIRSTS:
            raise InterleaveError(f"mode must be one of {MODES} and first one of {FIRSTS}, "
                                  f"got {self.mode!r}, {self.first!r}")
        if not (self.mean_text_words >= 1 and self.mean_speech_words >= 1 and self.span_words >= 1):
            raise InterleaveError("mean_text_words, mean_speech_words and span_words must be >= 1")

    # ----------------------------------------------------------------- vocabulary
    def marker_id(self, modality: str) -> int:
        if modality not in MARKERS:
            raise KeyError(f"unknown modality {modality!r}; markers: {MARKERS}")
        return self.layout.vocab_size + MARKERS.index(modality)

    @property
    def vocab_size(self) -> int:
        """Ids ``[0, vocab_size)``: text, (gap), speech codes, layout specials, markers."""
        return self.layout.vocab_size + len(MARKERS)

    def speech_layout(self) -> TokenLayout:
        """The layout one span is encoded with: this one without bos/eos (they wrap the whole sequence)."""
        return replace(self.layout, add_bos=False, add_eos=False)

    def modality(self, ids: torch.Tensor) -> torch.Tensor:
        """int8, same shape as ``ids``: `TEXT` (text ids), `SPEECH` (codes, holes), `SPECIAL` (markers,
        bos, eos, pad), `UNKNOWN` (outside the vocabulary or in the gap below the layout's offset)."""
        lay = self.layout
        ids = torch.as_tensor(ids)
        out = torch.full(ids.shape, UNKNOWN, dtype=torch.int8, device=ids.device)
        code_end = lay.offset + sum(lay.codebook_sizes)
        out[(ids >= 0) & (ids < self.text_vocab_size)] = TEXT
        out[(ids >= lay.offset) & (ids < code_end)] = SPEECH
        out[(ids >= code_end) & (ids < self.vocab_size)] = SPECIAL
        if lay.pattern == "delay":
            out[ids == lay.special_id("hole")] = SPEECH
        return out

    def describe_id(self, i: int) -> str:
        """What id ``i`` is, for error messages."""
        lay = self.layout
        if 0 <= i < self.text_vocab_size:
            return "a text token"
        if lay.offset <= i < lay.offset + sum(lay.codebook_sizes):
            k = int((lay.codebook_offsets() <= i).sum()) - 1
            return f"a speech code of codebook {k}"
        for name in SPECIALS:
            if i == lay.special_id(name):
                return f"the layout's {name}"
        for name in MARKERS:
            if i == self.marker_id(name):
                return f"the marker {MARKER_NAMES[name]}"
        return f"not an id of this vocabulary (size {self.vocab_size}; text < {self.text_vocab_size}, " \
               f"speech from {lay.offset})"

    # ----------------------------------------------------------------- saving
    def to_dict(self) -> dict:
        """A versioned, JSON-ready description (layout included); `from_dict` gives back an equal spec."""
        d = asdict(self)
        return {"format": INTERLEAVE_FORMAT, "format_version": INTERLEAVE_FORMAT_VERSION,
                "layout": self.layout.to_dict(),
                "text_tokenizer": {"name": self.text_tokenizer, "vocab_size": self.text_vocab_size,
                                   "vocab_sha256": self.text_vocab_sha256},
                "markers": {MARKER_NAMES[m]: self.marker_id(m) for m in MARKERS},
                "vocab_size": self.vocab_size, "cut": CUT_RULE, "leading_space": self.leading_space,
                "spans": {k: d[k] for k in SPAN_KEYS}}

    @classmethod
    def from_dict(cls, meta: dict, source: str = "interleave spec") -> "InterleaveSpec":
        """Inverse of `to_dict`; raises `InterleaveError` naming ``source`` for anything malformed,
        foreign, newer than this speechtok, or inconsistent (markers, vocab size, cut rule)."""
        what = "interleave spec"
        check_format(meta, source, INTERLEAVE_FORMAT, INTERLEAVE_FORMAT_VERSION, InterleaveError, what)
        known = {"format", "format_version", "layout", "text_tokenizer", "markers", "vocab_size", "cut",
                 "leading_space", "spans"}
        extra = sorted(set(meta) - known)
        if extra:
            raise InterleaveError(f"{source}: unknown {what} keys {extra}")

        def field(d, key, kind, **kw):
            return get_field(d, key, kind, source, InterleaveError, what, **kw)

        try:
            layout = TokenLayout.from_dict(field(meta, "layout", dict), f"{source} (layout)")
        except LayoutError as e:
            raise InterleaveError(str(e)) from e
        tt, spans = field(meta, "text_tokenizer", dict), field(meta, "spans", dict)
        for name, d, keys in (("text_tokenizer", tt, TOKENIZER_KEYS), ("spans", spans, SPAN_KEYS)):
            if sorted(set(d) - set(keys)):
                raise InterleaveError(f"{source}: unknown {what} {name} keys {sorted(set(d) - set(keys))}")
        if field(meta, "cut", str) != CUT_RULE:
            raise InterleaveError(f"{source}: unknown cut rule {safe_text(meta['cut'], 60)!r} (this speechtok "
                                  f"knows {CUT_RULE!r})")
        kw = dict(text_vocab_size=field(tt, "vocab_size", int, lo=1, hi=1 << 32),
                  text_tokenizer=field(tt, "name", str, default=""),
                  text_vocab_sha256=field(tt, "vocab_sha256", str, default=""),
                  leading_space=field(meta, "leading_space", bool),
                  mode=field(spans, "mode", str), first=field(spans, "first", str),
                  mean_text_words=field(spans, "mean_text_words", float, lo=1, hi=1e9),
                  mean_speech_words=field(spans, "mean_speech_words", float, lo=1, hi=1e9),
                  span_words=field(spans, "span_words", int, lo=1, hi=1 << 30))
        try:
            spec = cls(layout=layout, **kw)
        except InterleaveError as e:
            raise InterleaveError(f"{source}: {e}") from e
        markers = {MARKER_NAMES[m]: spec.marker_id(m) for m in MARKERS}
        if field(meta, "markers", dict) != markers or field(meta, "vocab_size", int) != spec.vocab_size:
            raise InterleaveError(f"{source}: markers {safe_text(meta['markers'], 80)} / vocab_size "
                                  f"{meta['vocab_size']} do not match the layout (expected {markers} / "
                                  f"{spec.vocab_size})")
        return spec


@dataclass(frozen=True)
class Span:
    """One span of an interleaved sequence: its ``modality`` ("text" | "speech"), the words it holds
    ``[words[0], words[1])``, its code tokens ``[steps[0], steps[1])`` (time steps of the `Codes`), the
    grid frames they cover ``[frames[0], frames[1])`` and its content's positions in the ids (marker
    excluded) ``[positions[0], positions[1])``."""

    modality: str
    words: tuple[int, int]
    steps: tuple[int, int]
    frames: tuple[int, int]
    positions: tuple[int, int] = (0, 0)


@dataclass(frozen=True, eq=False)
class Interleaved:
    """``ids`` int64 ``[L]``, ``modality`` int8 ``[L]`` (`TEXT`, `SPEECH`, `SPECIAL`), and the `Span`s."""

    ids: torch.Tensor
    modality: torch.Tensor
    spans: tuple[Span, ...]


@dataclass(frozen=True, eq=False)
class Segment:
    """One span given back by `Interleaver.split`: ``modality`` and ``content`` (the decoded text, or
    `Codes` ``[1, K, T]`` without durations), at positions ``[start, end)`` of the ids (marker excluded);
    ``complete`` is False only for the whole frames kept of an unfinished last speech span (lenient split)."""

    modality: str
    content: Union[str, Codes]
    start: int
    end: int
    complete: bool = True

    @property
    def text(self) -> Optional[str]:
        return self.content if self.modality == "text" else None

    @property
    def codes(self) -> Optional[Codes]:
        return self.content if self.modality == "speech" else None


class Interleaver:
    """An `InterleaveSpec` with its Hugging Face text ``tokenizer`` (checked to be the one it records).
    Build with `Interleaver.for_tokenizer`, or `Interleaver.from_dict` for a saved spec."""

    def __init__(self, spec: InterleaveSpec, tokenizer, check_tokenizer: bool = True):
        self.spec, self.tokenizer = spec, tokenizer
        if check_tokenizer:
            n = len(tokenizer)
            if n != spec.text_vocab_size:
                raise InterleaveError(f"text tokenizer has {n} ids, the spec was made with {spec.text_vocab_size} "
                                      f"({spec.text_tokenizer or 'unnamed tokenizer'})")
            if spec.text_vocab_sha256 and text_vocab_sha256(tokenizer) != spec.text_vocab_sha256:
                raise InterleaveError(f"text tokenizer's vocabulary differs from the one the spec was made with "
                                      f"({spec.text_tokenizer or 'unnamed tokenizer'}, sha256 "
                                      f"{spec.text_vocab_sha256[:12]}...)")

    @classmethod
    def for_tokenizer(cls, tokenizer, codes_or_layout: Union[Codes, TokenLayout], *, codebooks: Optional[int] = None,
                      pattern: str = "flatten", offset: Optional[int] = None, add_bos: bool = False,
                      add_eos: bool = False, **recipe) -> "Interleaver":
        """Join ``tokenizer`` with the layout of ``codes_or_layout`` (`TokenLayout.for_codes` with
        ``offset`` default ``len(tokenizer)``; a given layout is used as it is). ``recipe``: the
        `InterleaveSpec` span fields (mode, first, mean_text_words, mean_speech_words, span_words,
        leading_space)."""
        V = len(tokenizer)
        if isinstance(codes_or_layout, Codes):
            layout = TokenLayout.for_codes(codes_or_layout, codebooks, pattern=pattern,
                                           offset=V if offset is None else offset, add_bos=add_bos, add_eos=add_eos)
        else:
            layout = codes_or_layout
        spec = InterleaveSpec(layout=layout, text_vocab_size=V, text_tokenizer=str(tokenizer.name_or_path or ""),
                              text_vocab_sha256=text_vocab_sha256(tokenizer), **recipe)
        return cls(spec, tokenizer, check_tokenizer=False)

    @classmethod
    def from_dict(cls, meta: dict, tokenizer, source: str = "interleave spec") -> "Interleaver":
        return cls(InterleaveSpec.from_dict(meta, source), tokenizer)

    def to_dict(self) -> dict:
        return self.spec.to_dict()

    def with_(self, **changes) -> "Interleaver":
        """The same vocabulary with another recipe, e.g. ``with_(mode="text")``."""
        return Interleaver(replace(self.spec, **changes), self.tokenizer, check_tokenizer=False)

    # ----------------------------------------------------------------- planning
    def _choose(self, n_words: int, rng: random.Random) -> list[list]:
        """``[[modality, w0, w1], ...]`` covering words ``[0, n_words)``."""
        s = self.spec
        if n_words == 0:
            return [["text" if s.mode == "text" else "speech", 0, 0]]
        if s.mode in ("text", "speech"):
            return [[s.mode, 0, n_words]]
        m = s.first if s.first != "random" else ("text" if rng.random() < 0.5 else "speech")
        flip = {"text": "speech", "speech": "text"}
        if s.mode == "alternate":
            out = []
            for w0 in range(0, n_words, s.span_words):
                out.append([m, w0, min(w0 + s.span_words, n_words)])
                m = flip[m]
            return out
        out, w0 = [], 0
        for i in range(1, n_words):
            mean = s.mean_text_words if m == "text" else s.mean_speech_words
            if rng.random() < 1.0 / mean:
                out.append([m, w0, i])
                m, w0 = flip[m], i
        return out + [[m, w0, n_words]]

    def plan(self, codes: Codes, words: Sequence, seed: int = 0) -> list[Span]:
        """The spans of one utterance (``codes`` B=1, ``words`` in order), before tokenizing; see the
        module docstring for the recipe and the cut rule. Positions are left at (0, 0)."""
        if codes.batch_size != 1:
            raise InterleaveError(f"interleave takes one utterance (B=1), got B={codes.batch_size}: use unbatch()")
        words = validate_words(words, source="interleave words")
        edges = token_edges(codes)
        try:
            cuts = word_cuts(codes, words)
        except WordsError as e:
            raise InterleaveError(str(e)) from e
        spans: list[list] = []
        if not words:  # nothing to align: the whole utterance is one span (speech, unless mode is "text")
            n = int(codes.lengths[0])
            m = "text" if self.spec.mode == "text" else "speech"
            return [Span(m, (0, 0), (0, n if m == "speech" else 0), (0, int(edges[n]) if m == "speech" else 0))]
        for m, w0, w1 in self._choose(len(words), random.Random(int(seed))):
            a, b = cuts[w0], cuts[w1]
            if m == "speech" and a == b and w1 > w0:
                m = "text"  # words shorter than a token: no speech to show for them
            if spans and spans[-1][0] == m == "text":
                spans[-1][2], spans[-1][4] = w1, b
            else:
                spans.append([m, w0, w1, a, b])
        return [Span(m, (w0, w1), (a, b), (int(edges[a]), int(edges[b]))) for m, w0, w1, a, b in spans]

    # ----------------------------------------------------------------- interleave
    def span_text(self, words: Sequence[Word], w0: int, w1: int) -> str:
        """The text a span of words ``[w0, w1)`` becomes (see the module docstring)."""
        text = " ".join(w.text for w in words[w0:w1])
        return " " + text if self.spec.leading_space and w0 > 0 and text else text

    def interleave(self, codes: Codes, words: Sequence, seed: int = 0) -> Interleaved:
        """One utterance (``codes`` B=1 with or without durations; its ``words``) -> `Interleaved`."""
        s, lay = self.spec, self.spec.layout
        codes.validate()
        lay.check_codes(codes)
        words = validate_words(words, source="interleave words")
        spans = self.plan(codes, words, seed)
        span_layout = s.speech_layout()
        ids: list[int] = [lay.special_id("bos")] if lay.add_bos else []
        out = []
        for sp in spans:
            ids.append(s.marker_id(sp.modality))
            p0 = len(ids)
            if sp.modality == "text":
                piece = list(self.tokenizer.encode(self.span_text(words, *sp.words), add_special_tokens=False))
                bad = [t for t in piece if not 0 <= int(t) < s.text_vocab_size]
                if bad:
                    raise InterleaveError(f"the text tokenizer gave id {bad[0]} outside [0, {s.text_vocab_size})")
            else:
                a, b = sp.steps
                n = torch.tensor([b - a], device=codes.codes.device)
                part = codes.with_(codes=codes.codes[:, :, a:b], lengths=n, durations=None, audio_lengths=None)
                enc = span_layout.encode(part)
                piece = enc.tokens[0, :int(enc.lengths[0])].tolist()
            ids.extend(int(t) for t in piece)
            out.append(replace(sp, positions=(p0, len(ids))))
        if lay.add_eos:
            ids.append(lay.special_id("eos"))
        t = torch.tensor(ids, dtype=torch.long)
        return Interleaved(t, s.modality(t), tuple(out))

    # ----------------------------------------------------------------- split
    def split(self, ids, like: Optional[Codes] = None, lenient: bool = False) -> list[Segment]:
        """Inverse of `interleave`: int ids ``[L]`` -> `Segment`s in order (text decoded with the tokenizer,
        speech with the layout; ``like`` gives the codes' metadata when the layout does not record it).

        Strict (default): raises `InterleaveError` naming the position for a sequence that does not start
        with a marker (after bos), an id of the wrong kind inside a span, an unknown id, a speech span
        that is not whole frames, or a missing bos/eos. ``lenient=True`` (an unfinished sample): stops
        at the first eos/pad, and at the first span that does not parse, returning the segments before
        it; if that span is the last one and is speech, its longest prefix of whole frames is kept
        (`speechtok.lm.sampling.decode_lenient`) as a segment with ``complete=False``, when non-empty."""
        s, lay = self.spec, self.spec.layout
        x = torch.as_tensor(ids)
        if x.dim() != 1 or x.is_floating_point() or x.dtype == torch.bool:
            raise InterleaveError(f"split takes one sequence of int ids [L], got {x.dtype} of shape {tuple(x.shape)}")
        seq = [int(v) for v in x.tolist()]
        pos, end = 0, len(seq)
        bos, eos, pad = lay.special_id("bos"), lay.special_id("eos"), lay.special_id("pad")
        if lay.add_bos:
            if seq[:1] == [bos]:
                pos = 1
            elif not lenient:
                raise InterleaveError(f"expected bos ({bos}) at position 0, got {seq[:1] or 'an empty sequence'}")
        if lenient:
            stops = [i for i in range(pos, end) if seq[i] in (eos, pad)]
            end = stops[0] if stops else end
        elif lay.add_eos:
            if end <= pos or seq[end - 1] != eos:
                raise InterleaveError(f"expected eos ({eos}) at the end: an unfinished sample? "
                                      "(split(..., lenient=True) keeps its complete segments)")
            end -= 1
        markers = {s.marker_id(m): m for m in MARKERS}
        if pos < end and seq[pos] not in markers:
            if lenient:
                return []
            raise InterleaveError(f"position {pos}: {s.describe_id(seq[pos])} ({seq[pos]}) where a modality "
                                  "marker [TEXT] or [SPEECH] must start the sequence")
        starts = [i for i in range(pos, end) if seq[i] in markers] + [end]
        segments = []
        for i0, i1 in zip(starts[:-1], starts[1:]):
            try:
                segments.append(self._segment(markers[seq[i0]], seq, i0 + 1, i1, like))
            except InterleaveError:
                if not lenient:
                    raise
                if markers[seq[i0]] == "speech" and i1 == end:
                    from .sampling import decode_lenient

                    codes, _ = decode_lenient(s.speech_layout(), torch.tensor(seq[i0 + 1:i1], dtype=torch.long),
                                              like=like)
                    if codes.num_frames:
                        segments.append(Segment("speech", codes, i0 + 1, i1, complete=False))
                break
        return segments

    def _segment(self, modality: str, seq: list[int], a: int, b: int, like: Optional[Codes]) -> Segment:
        s = self.spec
        body = seq[a:b]
        want = TEXT if modality == "text" else SPEECH
        kinds = s.modality(torch.tensor(body, dtype=torch.long)) if body else torch.zeros(0, dtype=torch.int8)
        wrong = (kinds != want).nonzero()
        if len(wrong):
            p = a + int(wrong[0])
            raise InterleaveError(f"position {p}: {s.describe_id(seq[p])} ({seq[p]}) inside a "
                                  f"{MARKER_NAMES[modality]} span")
        if modality == "text":
            text = self.tokenizer.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            return Segment("text", text, a, b)
        tokens = LMTokens(torch.tensor([body], dtype=torch.long).reshape(1, len(body)), torch.tensor([len(body)]))
        try:
            codes = s.speech_layout().decode(tokens, like=like)
        except CodesError as e:
            raise InterleaveError(f"positions [{a}, {b}): the [SPEECH] span does not decode ({e})") from e
        return Segment("speech", codes, a, b)

    # ----------------------------------------------------------------- batches
    def collate(self, items: Sequence[Interleaved]) -> LMTokens:
        """Pad sequences into `LMTokens` ``[B, L]`` with the layout's pad; the layout's
        ``attention_mask`` / ``labels`` apply to it as to any of its sequences (holes and pad ignored)."""
        if not items:
            raise InterleaveError("collate needs at least one sequence")
        n = torch.tensor([len(it.ids) for it in items], dtype=torch.long)
        out = torch.full((len(items), int(n.max())), self.spec.layout.special_id("pad"), dtype=torch.long)
        for i, it in enumerate(items):
            out[i, :len(it.ids)] = it.ids
        return LMTokens(out, n)
