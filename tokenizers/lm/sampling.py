"""Sampling back to audio: which ids a `TokenLayout` allows next, and a lenient decode.

The layout is a grammar. A flat sequence is ``[bos] body [eos] pad...``; body position ``p`` is
grid column ``g = p // K``, codebook ``k = p % K``. The *terminator* is ``eos`` when the layout
has ``add_eos``, else ``pad``. What may come next:

``flatten`` (and ``delay`` with ``K = 1``)
    codebook ``k``'s codes; at ``k = 0`` also the terminator (the item then has ``g`` frames).
``delay``, ``K > 1``
    the item's frame count ``T`` is unknown until a ``hole`` comes at codebook 0 of column
    ``g >= 1`` (then ``T = g``). Cell ``(g, k)`` is a code of codebook ``k`` when ``k <= g < k + T``
    and a ``hole`` otherwise; before ``T`` is known, codebook 0 may be a code or that ending hole
    (at ``g = 0``: a code, or the terminator for an empty item), codebook ``k >= 1`` is a hole for
    ``g < k`` and a code after. After column ``T + K - 2`` only the terminator may come.
After the terminator only ``pad``. Parallel streams (``flat=False``, ``[K, L]`` grids) follow the
same cell rules column by column and end with ``pad`` columns.

`LayoutState` walks one sequence; `allowed_next` and `LayoutLogitsProcessor` (for
``transformers``' ``generate``) mask everything else, so any sample decodes; `decode_lenient`
repairs or cuts a sample that stopped early or went wrong, reporting what it did.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Optional, Sequence, TypeVar, Union

import torch

from ..codes import Codes, CodesError
from .layout import LMTokens, TokenLayout

_NEG_INF = float("-inf")
S = TypeVar("S")


class LayoutState:
    """Where one flat sequence stands in ``layout``'s grammar; `feed` it ids one at a time.

    Attributes: ``pos`` ids consumed; ``frames`` the item's frame count once known (else None);
    ``ended`` the terminator (or a later ``pad``) has been consumed.
    """

    def __init__(self, layout: TokenLayout, parallel: bool = False):
        if not parallel and not layout.flat:
            raise ValueError("LayoutState walks flat sequences; use parallel=True per grid column")
        self.layout = layout
        self.K = layout.num_codebooks
        self.delay = layout.pattern == "delay" and self.K > 1
        ids = {n: layout.special_id(n) for n in ("pad", "bos", "eos", "hole")}
        self.pad, self.bos, self.eos, self.hole = ids["pad"], ids["bos"], ids["eos"], ids["hole"]
        self.term = self.eos if layout.add_eos and not parallel else self.pad
        self.first = int(layout.add_bos and not parallel)
        self.lo = layout.codebook_offsets().tolist()
        self.pos, self.frames, self.ended = 0, None, False

    # what may come next: (codebook whose codes are allowed or None, allowed special ids)
    def cell(self, g: int, k: int) -> tuple[Optional[int], tuple[int, ...]]:
        """Allowed content of body cell (column ``g``, codebook ``k``) given what came so far."""
        T, K = self.frames, self.K
        if not self.delay:
            return k, ((self.term,) if k == 0 else ())
        if T is not None and g >= T + K - 1:
            return None, (self.term,) if k == 0 else (self.pad,)
        if k == 0:
            if T is not None:
                return None, (self.hole,)
            return 0, ((self.term,) if g == 0 else (self.hole,))
        if g < k or T is not None and g - k >= T:
            return None, (self.hole,)
        return k, ()

    def expected(self) -> tuple[Optional[int], tuple[int, ...]]:
        if self.ended:
            return None, (self.pad,)
        if self.pos < self.first:
            return None, (self.bos,)
        p = self.pos - self.first
        return self.cell(p // self.K, p % self.K)

    def allows(self, token: int) -> bool:
        k, specials = self.expected()
        return token in specials or k is not None and 0 <= token - self.lo[k] < self.layout.codebook_sizes[k]

    def allowed(self, vocab_size: Optional[int] = None) -> torch.Tensor:
        """bool ``[vocab_size]`` (default the layout's): the ids that may come next."""
        mask = torch.zeros(vocab_size or self.layout.vocab_size, dtype=torch.bool)
        k, specials = self.expected()
        if k is not None:
            mask[self.lo[k]:self.lo[k] + self.layout.codebook_sizes[k]] = True
        for s in specials:
            mask[s] = True
        return mask

    def feed(self, token: int) -> None:
        """Consume ``token``; raises `CodesError` if the layout does not allow it here."""
        token = int(token)
        if not self.allows(token):
            raise CodesError(f"token {token} is not allowed at position {self.pos}")
        if not self.ended and self.pos >= self.first:
            g, k = divmod(self.pos - self.first, self.K)
            if token == self.term:
                self.frames = g if self.frames is None else self.frames
                self.ended = True
            elif token == self.hole and k == 0 and self.frames is None:
                self.frames = g
        self.pos += 1


def allowed_next(layout: TokenLayout, prefix: Union[Sequence[int], torch.Tensor],
                 vocab_size: Optional[int] = None) -> torch.Tensor:
    """bool ``[vocab_size]``: the ids ``layout`` allows after the flat sequence ``prefix`` (for any
    sampler: set the other logits to -inf). Raises `CodesError` if ``prefix`` itself is invalid."""
    state = LayoutState(layout)
    for t in (prefix.tolist() if isinstance(prefix, torch.Tensor) else prefix):
        state.feed(t)
    return state.allowed(vocab_size)


class RowStates(Generic[S]):
    """Per-row grammar states for a logits processor: ``get(b, ids)`` returns row ``b``'s state after
    ``ids`` (int64 ``[L]``), feeding only the ids past those it saw last time; a row whose prefix
    changed (beam reordering, a new ``generate`` call) is walked again from ``new()``. A row whose
    ids the grammar rejects raises (from ``feed``) and is forgotten, so a later call re-walks it."""

    def __init__(self, new: Callable[[], S]):
        self.new = new
        self._rows: list[Optional[tuple[S, torch.Tensor]]] = []

    def get(self, b: int, ids: torch.Tensor) -> S:
        while len(self._rows) <= b:
            self._rows.append(None)
        entry, self._rows[b] = self._rows[b], None
        if entry is not None and entry[1].numel() <= ids.numel() and torch.equal(ids[:entry[1].numel()], entry[1]):
            state, todo = entry[0], ids[entry[1].numel():]
        else:
            state, todo = self.new(), ids
        for t in todo.tolist():
            state.feed(t)
        self._rows[b] = (state, ids.clone())
        return state


class LayoutLogitsProcessor:
    """Masks logits to the ids ``layout`` allows next, for ``model.generate(logits_processor=[...])``.

    ``input_ids[:, start:]`` are the layout's sequence (e.g. ``start=0`` with ``[[bos]]`` as the
    prompt, or the length of a text prompt before it). Ids outside the layout (a larger model
    vocabulary) are never allowed. Rows are walked incrementally, so a generate step costs O(1)
    per row; a row whose prefix changed (beam reordering) is re-walked.
    """

    def __init__(self, layout: TokenLayout, start: int = 0):
        if not layout.flat:
            raise ValueError("generate produces one stream: use a flat layout (pattern 'flatten', or 'delay' with flat=True)")
        self.layout, self.start = layout, int(start)
        self.rows: RowStates[LayoutState] = RowStates(lambda: LayoutState(layout))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        V = scores.shape[-1]
        if V < self.layout.vocab_size:
            raise ValueError(f"model vocabulary {V} < layout vocab_size {self.layout.vocab_size}")
        ids = input_ids[:, self.start:].cpu()
        mask = torch.stack([self.rows.get(b, ids[b]).allowed(V) for b in range(ids.shape[0])]).to(scores.device)
        return scores.masked_fill(~mask, _NEG_INF)


def logits_processor(layout: TokenLayout, start: int = 0):
    """A ``transformers.LogitsProcessorList`` holding a `LayoutLogitsProcessor` (needs transformers)."""
    try:
        from transformers import LogitsProcessorList
    except ImportError as e:  # pragma: no cover
        raise ImportError("logits_processor needs transformers: pip install 'speechtok[ssl]'") from e
    return LogitsProcessorList([LayoutLogitsProcessor(layout, start)])


# --------------------------------------------------------------------------- lenient decode
@dataclass(frozen=True)
class Repair:
    """What `decode_lenient` did to one item: ``frames`` kept, ``used`` ids that became them,
    ``dropped`` ids cut off (an unfinished frame, an invalid id and what followed it, or more);
    ``complete`` the sample was well formed and nothing was dropped; ``problem`` why not."""

    item: int
    frames: int
    used: int
    dropped: int
    complete: bool
    problem: Optional[str]


def _walk(state: LayoutState, ids: list[int]) -> tuple[list[int], int, Optional[str]]:
    """Accept the longest valid prefix of one sequence: (body cells, ids consumed, problem)."""
    body: list[int] = []
    for i, t in enumerate(ids):
        if not state.allows(t):
            k, _ = state.expected()
            what = "bos" if state.pos < state.first else "padding" if state.ended else \
                f"a code of codebook {k}" if k is not None else "a special token"
            return body, i, f"id {t} at position {i} where {what} belongs; cut there"
        inside = state.pos >= state.first and not state.ended
        state.feed(t)
        if inside and not state.ended:
            body.append(t)
        if state.ended:
            return body, i + 1, None
    return body, len(ids), None


def decode_lenient(layout: TokenLayout, tokens: Union[LMTokens, torch.Tensor], like: Optional[Codes] = None,
                   ) -> tuple[Codes, list[Repair]]:
    """Decode sampled ids whatever state they are in: each item keeps its longest well-formed
    prefix of whole frames; a `Repair` per item says what was kept and what was dropped.

    ``tokens``: `LMTokens`, or flat ids ``[B, L]`` / ``[L]`` (whole rows are read; a terminator
    ends an item, later ``pad`` is ignored). Parallel layouts take ``[B, K, L]`` / ``[K, L]`` grids.
    Metadata as in `TokenLayout.decode`. Never raises for the ids' content.
    """
    if isinstance(tokens, LMTokens):
        ids, lengths = tokens.tokens, tokens.lengths
    else:
        ids = tokens[None] if tokens.dim() == (1 if layout.flat else 2) else tokens
        lengths = torch.full((ids.shape[0],), ids.shape[-1], dtype=torch.long)
    if ids.dim() != (2 if layout.flat else 3):
        raise CodesError(f"decode_lenient: ids of shape {tuple(ids.shape)} do not fit a "
                         f"{'flat' if layout.flat else 'parallel'} layout")
    K = layout.num_codebooks
    delay = layout.pattern == "delay" and K > 1
    lo = layout.codebook_offsets()
    rows, reports = [], []
    for b in range(ids.shape[0]):
        n = int(lengths[b])
        seq = ids[b, :n].tolist() if layout.flat else ids[b, :, :n].transpose(0, 1).reshape(-1).tolist()
        state = LayoutState(layout, parallel=not layout.flat)
        body, consumed, problem = _walk(state, seq)
        cols = len(body) // K
        whole = max(cols - (K - 1), 0) if delay else cols
        T = whole if state.frames is None else min(state.frames, whole)
        grid = torch.tensor(body[:cols * K], dtype=torch.long).reshape(cols, K).T
        shift = (lambda k: k) if delay else (lambda k: 0)
        rows.append(torch.stack([grid[k, shift(k):shift(k) + T] for k in range(K)]) - lo[:, None])
        used = (T + (K - 1) * (T > 0) if delay else T) * K
        dropped = len(body) - used + sum(t != state.pad for t in seq[consumed:])
        # without eos, running out of ids where padding could start is a proper end
        if problem is None and not (state.ended or state.term == state.pad and state.allows(state.pad)):
            problem = f"no terminator after {len(seq)} ids"
        if problem is not None and dropped:
            problem += f"; kept {T} whole frames, dropped {dropped} ids"
        reports.append(Repair(item=b, frames=T, used=used, dropped=dropped,
                              complete=problem is None and dropped == 0, problem=problem))
    T_max = max((r.shape[1] for r in rows), default=0)
    out = torch.full((len(rows), K, T_max), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :, :r.shape[1]] = r
    return layout.make_codes(out, torch.tensor([r.shape[1] for r in rows], dtype=torch.long), like), reports
