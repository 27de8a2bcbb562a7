"""Constrained sampling for speech-text interleaved sequences (`speechtok.lm.interleave`).

The grammar of one sequence, for an `InterleaveSpec` (markers ``[TEXT]``, ``[SPEECH]``; the
*terminator* is the layout's ``eos`` when it has ``add_eos``, else ``pad``, as in `LayoutState`)::

    [bos]?  span+  terminator  pad*          span = [TEXT] text-id*  |  [SPEECH] speech-id*

``[bos]`` when the layout has ``add_bos``; then a marker must come (no sequence without a span).
``[TEXT]`` span
    any text id ``[0, text_vocab_size)`` (never the gap below the layout's offset).
``[SPEECH]`` span
    the ids of `InterleaveSpec.speech_layout` (the layout without bos/eos: each span is encoded on
    its own, as `Interleaver.interleave` does), walked by a `LayoutState`; the span may end only
    where that state would accept its own terminator: after a whole frame (``delay``: only once
    the span's grid is complete, i.e. after the ending hole and the last column).
Ending a span (where it may end): the marker of the *other* modality (interleave alternates:
two spans of one modality in a row never occur), or the terminator.
Empty spans: `interleave` makes one only for an utterance without words, and then it is the whole
sequence (``[bos]? [TEXT]|[SPEECH] [eos]?``). So an empty span may be followed by the terminator
when it is the first span, and never by a marker.

`InterleaveState` walks one sequence; `InterleaveLogitsProcessor` masks ``transformers``' logits
with it, so every finished sample passes `Interleaver.split` and ``split(ids, lenient=True)`` of an
unfinished one loses at most the unfinished end of its last speech span. ``force`` (a modality)
restricts what may be *sampled* next, not what is accepted as already written (a prompt): see
`InterleaveState.allowed`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .interleave import MARKERS, InterleaveError, InterleaveSpec
from .sampling import LayoutState, RowStates

_NEG_INF = float("-inf")


class InterleaveState:
    """Where one interleaved sequence stands in the grammar (module docstring); `feed` ids one at a time.

    Attributes: ``pos`` ids consumed; ``span`` the current span's modality ("text" | "speech") or
    None (before the first marker, or after the end); ``span_ids`` ids in the current span (marker
    excluded); ``spans`` markers consumed; ``sub`` the `LayoutState` of the current speech span (None
    elsewhere; ``sub.frames`` its frames once known); ``ended`` the terminator (or a later ``pad``)
    has been consumed; ``term`` the terminator's id.
    """

    def __init__(self, spec: InterleaveSpec):
        self.spec, lay = spec, spec.layout
        self.pad, self.bos, self.eos, self.hole = (lay.special_id(n) for n in ("pad", "bos", "eos", "hole"))
        self.term = self.eos if lay.add_eos else self.pad
        self.marker = {m: spec.marker_id(m) for m in MARKERS}
        self.modality_of = {i: m for m, i in self.marker.items()}
        self.span_layout = spec.speech_layout()
        self.n_text = spec.text_vocab_size
        self.code_lo, self.code_hi = lay.offset, lay.offset + sum(lay.codebook_sizes)
        self.pos, self.span, self.span_ids, self.spans, self.sub, self.ended = 0, None, 0, 0, None, False

    # ----------------------------------------------------------------- where the current span stands
    def _whole(self) -> bool:
        """The current span's content is complete: text always, speech where its layout could end."""
        return self.span == "text" or self.span == "speech" and self.sub.allows(self.sub.term)

    def can_switch(self) -> bool:
        """The other modality's marker may come next."""
        return self.span is not None and self.span_ids > 0 and self._whole()

    def can_end(self) -> bool:
        """The terminator may come next."""
        return self.span is not None and (self.span_ids > 0 or self.spans == 1) and self._whole()

    def _content(self, token: int) -> bool:
        if self.span == "text":
            return 0 <= token < self.n_text
        return token != self.sub.term and self.sub.allows(token)

    # ----------------------------------------------------------------- grammar
    def allows(self, token: int) -> bool:
        """Whether the grammar accepts ``token`` next (what `feed` accepts; ``force`` plays no part)."""
        token = int(token)
        if self.ended:
            return token == self.pad
        if self.pos == 0 and self.spec.layout.add_bos:
            return token == self.bos
        if token in self.modality_of:
            return self.span is None or self.modality_of[token] != self.span and self.can_switch()
        if self.span is None:
            return False
        if token == self.term:
            return self.can_end()
        return self._content(token)

    def feed(self, token: int) -> None:
        """Consume ``token``; raises `InterleaveError` if the grammar does not allow it here."""
        token = int(token)
        if not self.allows(token):
            where = "after the end" if self.ended else f"in a {self.span} span" if self.span else "before a span"
            raise InterleaveError(f"id {token} ({self.spec.describe_id(token)}) is not allowed at position "
                                  f"{self.pos} ({where})")
        if self.ended:
            pass
        elif token in self.modality_of:
            self.span, self.span_ids, self.spans = self.modality_of[token], 0, self.spans + 1
            self.sub = LayoutState(self.span_layout) if self.span == "speech" else None
        elif token == self.term and self.span is not None:
            self.span, self.sub, self.ended = None, None, True
        elif self.span is not None:
            if self.sub is not None:
                self.sub.feed(token)
            self.span_ids += 1
        self.pos += 1

    def allowed(self, vocab_size: Optional[int] = None, force: Optional[str] = None) -> torch.Tensor:
        """bool ``[vocab_size]`` (default ``spec.vocab_size``): the ids that may come next.

        ``force`` ("text" | "speech"): keep only that modality's ids, its marker, and the terminator
        inside a span of it, wherever the grammar allows one of them. So after a text prompt
        ``force="speech"`` makes the next id ``[SPEECH]`` and forbids ``[TEXT]`` from then on; a span of
        the other modality that cannot end yet (mid-frame speech, an empty first span) continues
        under the grammar until it can (force never empties the mask)."""
        V = self.spec.vocab_size if vocab_size is None else int(vocab_size)
        if V < self.spec.vocab_size:
            raise ValueError(f"vocab_size {V} < the interleave vocabulary {self.spec.vocab_size}")
        mask = torch.zeros(V, dtype=torch.bool)
        if self.ended:
            mask[self.pad] = True
            return mask
        if self.pos == 0 and self.spec.layout.add_bos:
            mask[self.bos] = True
            return mask
        if self.span is None:
            mask[list(self.marker.values())] = True
        else:
            if self.span == "text":
                mask[:self.n_text] = True
            else:
                mask[:self.spec.layout.vocab_size] = self.sub.allowed()
                mask[self.sub.term] = False
            if self.can_switch():
                mask[self.marker["speech" if self.span == "text" else "text"]] = True
            if self.can_end():
                mask[self.term] = True
        if force is None:
            return mask
        if force not in MARKERS:
            raise ValueError(f"force must be one of {MARKERS} or None, got {force!r}")
        keep = torch.zeros(V, dtype=torch.bool)
        keep[self.marker[force]] = True
        if force == "text":
            keep[:self.n_text] = True
        else:
            keep[self.code_lo:self.code_hi] = True
            keep[self.hole] = self.spec.layout.pattern == "delay"
        if self.span == force:
            keep[self.term] = True
        forced = mask & keep
        return forced if forced.any() else mask


# --------------------------------------------------------------------------- generate
class InterleaveLogitsProcessor:
    """Masks logits to the ids the interleaved grammar allows next, for
    ``model.generate(logits_processor=[...])``: ``(input_ids [B, L], scores [B, V]) -> scores [B, V]``.

    ``input_ids[:, start:]`` are the interleaved sequence (prompt included: e.g. ``[[bos, [TEXT],
    text...]]``); ids before ``start`` are ignored. Ids outside the spec's vocabulary (a larger model
    vocabulary, ``V > spec.vocab_size``) and the gap between text and speech ids are never allowed.
    ``force``: see `InterleaveState.allowed`. Rows are walked incrementally (`RowStates`). Give
    ``generate`` ``pad_token_id`` = the layout's pad (after the terminator only pad is allowed), and
    ``eos_token_id`` = its eos when the layout has one.
    """

    def __init__(self, spec: InterleaveSpec, start: int = 0, force: Optional[str] = None):
        if force is not None and force not in MARKERS:
            raise ValueError(f"force must be one of {MARKERS} or None, got {force!r}")
        self.spec, self.start, self.force = spec, int(start), force
        self.rows: RowStates[InterleaveState] = RowStates(lambda: InterleaveState(spec))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        V = scores.shape[-1]
        if V < self.spec.vocab_size:
            raise ValueError(f"model vocabulary {V} < interleave vocab_size {self.spec.vocab_size}")
        ids = input_ids[:, self.start:].cpu()
        mask = torch.stack([self.rows.get(b, ids[b]).allowed(V, self.force) for b in range(ids.shape[0])])
        return scores.masked_fill(~mask.to(scores.device), _NEG_INF)


def interleave_logits_processor(spec: InterleaveSpec, start: int = 0, force: Optional[str] = None):
    """A ``transformers.LogitsProcessorList`` holding an `InterleaveLogitsProcessor` (needs transformers)."""
    try:
        from transformers import LogitsProcessorList
    except ImportError as e:  # pragma: no cover
        raise ImportError("interleave_logits_processor needs transformers: pip install 'speechtok[ssl]'") from e
    return LogitsProcessorList([InterleaveLogitsProcessor(spec, start, force)])
