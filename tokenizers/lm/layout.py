"""`Codes` <-> flat LM token ids, exactly invertible; a layout is data that travels with what it made.

One vocabulary: ``offset`` (ids below it are left to e.g. text tokens), then codebook 0's codes,
codebook 1's, ..., then the special tokens `SPECIALS`. Code ``c`` of codebook ``k`` is
``offset + sum(codebook_sizes[:k]) + c``.

Specials (each its own id):
    ``pad``   sequence padding: positions ``>= lengths`` of a batch (never part of a sequence);
    ``bos``   first token of a single-stream sequence when ``add_bos``;
    ``eos``   last token of a single-stream sequence when ``add_eos``;
    ``hole``  an empty cell of the delay pattern (codebook ``k`` before frame ``k`` and after its end).

Patterns (``[B, K, T]`` codes in):
    ``flatten``  time-major single stream ``[B, T*K]``: frame 0 codebooks 0..K-1, frame 1, ...
    ``delay``    MusicGen's delay pattern: codebook ``k`` shifted right by ``k`` frames, giving
                 ``K`` parallel streams ``[B, K, T+K-1]`` whose empty cells hold ``hole``;
                 ``flat=True`` flattens that grid time-major to ``[B, (T+K-1)*K]``. An empty item
                 (``T=0``) has no grid at all.

Training masks (`attention_mask`, `labels`), the same for every pattern:
    ``attention_mask``  True at positions ``< lengths`` (holes, bos and eos included), False at ``pad``;
    ``labels``          the ids, with ``ignore_index`` at ``pad`` and at ``hole`` (holes are fixed by the
                        pattern: nothing to learn; constrained sampling forces them). For a
                        Hugging Face causal LM pass ``labels`` as they are: the model shifts them.

A layout made by `TokenLayout.for_codes` also records what the codes mean (model id, frame and
sample rate, semantic codebooks), so `decode` needs no template, and `to_dict` / `from_dict` save it
(versioned, checked) beside the data it made. Durations (after dedup/BPE) are not part of the token
stream: decoded codes have one frame per token.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Literal, Optional

import torch

from ..codes import Codes, CodesError
from ..formats import MAX_CODEBOOKS, check_format, get_field

SPECIALS = ("pad", "bos", "eos", "hole")
LAYOUT_FORMAT = "speechtok.layout"
LAYOUT_FORMAT_VERSION = 1
IGNORE_INDEX = -100


class LayoutError(CodesError):
    """A saved layout is malformed, of another format/version, or does not fit the data."""


@dataclass(frozen=True, eq=False)
class LMTokens:
    """Token ids: ``tokens`` int64 ``[B, L]`` (single stream) or ``[B, K, L]`` (parallel streams);
    ``lengths`` ``[B]`` valid positions (``pad`` after them)."""

    tokens: torch.Tensor
    lengths: torch.Tensor


@dataclass(frozen=True)
class TokenLayout:
    """How codes map to LM ids (see module docstring). Build with `TokenLayout.for_codes`.

    ``model_id``, ``frame_rate``, ``sample_rate`` and ``n_semantic`` describe the codes (filled by
    `for_codes`); they let `decode` rebuild `Codes` without a template.
    """

    codebook_sizes: tuple[int, ...]
    pattern: Literal["flatten", "delay"] = "flatten"
    flat: bool = True
    offset: int = 0
    add_bos: bool = False
    add_eos: bool = False
    model_id: Optional[str] = None
    frame_rate: Optional[float] = None
    sample_rate: Optional[int] = None
    n_semantic: int = 0

    def __post_init__(self):
        object.__setattr__(self, "codebook_sizes", tuple(int(s) for s in self.codebook_sizes))
        if self.pattern not in ("flatten", "delay"):
            raise ValueError(f"pattern must be 'flatten' or 'delay', got {self.pattern!r}")
        if self.pattern == "flatten" and not self.flat:
            raise ValueError("pattern 'flatten' is always flat")
        if not self.flat and (self.add_bos or self.add_eos):
            raise ValueError("bos/eos wrap single-stream (flat) sequences only")
        if not self.codebook_sizes or min(self.codebook_sizes) < 1 or self.offset < 0:
            raise ValueError(f"bad codebook_sizes {self.codebook_sizes} / offset {self.offset}")
        if not 0 <= self.n_semantic <= len(self.codebook_sizes):
            raise ValueError(f"n_semantic {self.n_semantic} not in [0, {len(self.codebook_sizes)}]")

    @classmethod
    def for_codes(cls, codes: Codes, codebooks: Optional[int] = None, **kw) -> "TokenLayout":
        """The layout for ``codes`` (its first ``codebooks`` codebooks, default all), keeping its metadata."""
        k = codes.num_codebooks if codebooks is None else int(codebooks)
        if not 1 <= k <= codes.num_codebooks:
            raise CodesError(f"codebooks={k}: need 1 <= codebooks <= K={codes.num_codebooks}")
        meta = dict(model_id=codes.model_id, frame_rate=float(codes.frame_rate), sample_rate=int(codes.sample_rate),
                    n_semantic=min(codes.n_semantic, k))
        meta.update(kw)
        return cls(codebook_sizes=tuple(codes.codebook_sizes[:k]), **meta)

    # ----------------------------------------------------------------- vocabulary
    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    def codebook_offsets(self) -> torch.Tensor:
        """int64 ``[K]``: first id of each codebook."""
        sizes = torch.tensor((0,) + self.codebook_sizes[:-1], dtype=torch.long)
        return self.offset + sizes.cumsum(0)

    def special_id(self, name: str) -> int:
        if name not in SPECIALS:
            raise KeyError(f"unknown special token {name!r}; specials: {SPECIALS}")
        return self.offset + sum(self.codebook_sizes) + SPECIALS.index(name)

    @property
    def vocab_size(self) -> int:
        """Ids ``[0, vocab_size)``, including the ``offset`` ids below the audio codes."""
        return self.offset + sum(self.codebook_sizes) + len(SPECIALS)

    def frame_tokens(self, frames: int) -> int:
        """Sequence length (positions along the last axis) of an item of ``frames`` frames."""
        K = self.num_codebooks
        cols = frames + (K - 1) * (frames > 0) if self.pattern == "delay" else frames
        if not self.flat:
            return cols
        return cols * K + self.add_bos + self.add_eos

    # ----------------------------------------------------------------- saving
    def to_dict(self) -> dict:
        """A versioned, JSON-ready description; `from_dict` gives back an equal layout."""
        d = asdict(self)
        d["codebook_sizes"] = list(self.codebook_sizes)
        return {"format": LAYOUT_FORMAT, "format_version": LAYOUT_FORMAT_VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, meta: dict, source: str = "layout") -> "TokenLayout":
        """Inverse of `to_dict`; raises `LayoutError` naming ``source`` for anything malformed."""
        check_format(meta, source, LAYOUT_FORMAT, LAYOUT_FORMAT_VERSION, LayoutError, "token layout")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(meta) - known - {"format", "format_version"})
        if extra:
            raise LayoutError(f"{source}: unknown token layout keys {extra}")

        def field(key, kind, **kw):
            return get_field(meta, key, kind, source, LayoutError, "token layout", **kw)

        sizes = field("codebook_sizes", list)
        if not sizes or len(sizes) > MAX_CODEBOOKS or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 1 << 24 for s in sizes):
            raise LayoutError(f"{source}: token layout codebook_sizes must be positive ints, got {sizes[:8]!r}")
        try:
            return cls(codebook_sizes=tuple(sizes), pattern=field("pattern", str, default="flatten"),
                       flat=field("flat", bool, default=True), offset=field("offset", int, lo=0, hi=1 << 40, default=0),
                       add_bos=field("add_bos", bool, default=False), add_eos=field("add_eos", bool, default=False),
                       model_id=field("model_id", str, default=None, allow_none=True),
                       frame_rate=field("frame_rate", float, lo=1e-3, hi=1e6, default=None, allow_none=True),
                       sample_rate=field("sample_rate", int, lo=1, hi=384_000, default=None, allow_none=True),
                       n_semantic=field("n_semantic", int, lo=0, hi=len(sizes), default=0))
        except ValueError as e:
            if isinstance(e, LayoutError):
                raise
            raise LayoutError(f"{source}: invalid token layout ({e})") from e

    @classmethod
    def from_json(cls, text: str, source: str = "layout") -> "TokenLayout":
        try:
            meta = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise LayoutError(f"{source}: token layout is not JSON ({e})") from e
        return cls.from_dict(meta, source)

    def check_codes(self, codes: Codes) -> None:
        """Fail loudly when ``codes`` are not what this layout was made for."""
        sizes = tuple(codes.codebook_sizes[:self.num_codebooks])
        if sizes != self.codebook_sizes:
            raise CodesError(f"layout is for codebook sizes {self.codebook_sizes}, codes have {codes.codebook_sizes}")
        if self.model_id is not None and codes.model_id != self.model_id:
            raise CodesError(f"layout is for model {self.model_id!r}, codes were made by {codes.model_id!r}")

    # ----------------------------------------------------------------- codes -> tokens
    def encode(self, codes: Codes) -> LMTokens:
        """`Codes` ``[B, K', T]`` (``K' >= K``: the first ``K`` are used) -> `LMTokens` (`decode` inverts it)."""
        codes.validate()
        self.check_codes(codes)
        if codes.num_codebooks > self.num_codebooks:
            codes = codes.take_codebooks(self.num_codebooks)
        B, K, T = codes.codes.shape
        pad, hole = self.special_id("pad"), self.special_id("hole")
        dev = codes.codes.device
        ids = codes.codes + self.codebook_offsets().to(dev)[None, :, None]
        ids = ids.masked_fill(~codes.mask()[:, None, :], pad)
        n = codes.lengths.clone()
        if self.pattern == "delay":
            cols = n + (K - 1) * (n > 0)
            grid = torch.full((B, K, T + K - 1), pad, dtype=torch.long, device=dev)
            inside = torch.arange(T + K - 1, device=dev)[None, :] < cols[:, None]  # [B, T+K-1]
            grid.masked_fill_(inside[:, None, :], hole)
            for k in range(K):
                grid[:, k, k:k + T] = torch.where(codes.mask(), ids[:, k], grid[:, k, k:k + T])
            ids, n = grid, cols
            if not self.flat:
                return LMTokens(ids, n)
        seq = ids.transpose(1, 2).reshape(B, -1)  # time-major
        n = n * K
        if self.add_bos:
            seq = torch.cat([torch.full((B, 1), self.special_id("bos"), dtype=torch.long, device=dev), seq], 1)
            n = n + 1
        if self.add_eos:
            seq = torch.cat([seq, torch.full((B, 1), pad, dtype=torch.long, device=dev)], 1)
            seq[torch.arange(B, device=dev), n] = self.special_id("eos")
            n = n + 1
        return LMTokens(seq, n)

    # ----------------------------------------------------------------- masks
    def attention_mask(self, tokens: LMTokens) -> torch.Tensor:
        """bool ``[B, L]``: positions inside each sequence (see module docstring)."""
        L = tokens.tokens.shape[-1]
        return torch.arange(L, device=tokens.tokens.device)[None, :] < tokens.lengths[:, None]

    def labels(self, tokens: LMTokens, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """``tokens.tokens`` with ``ignore_index`` at padding and holes (same shape)."""
        mask = self.attention_mask(tokens)
        if tokens.tokens.dim() == 3:
            mask = mask[:, None, :]
        keep = mask & (tokens.tokens != self.special_id("hole"))
        return tokens.tokens.masked_fill(~keep, ignore_index)

    # ----------------------------------------------------------------- tokens -> codes
    def decode_tensor(self, tokens: LMTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """`LMTokens` -> ``(codes [B, K, T] with -1 padding, lengths [B])``; checks every id (strict:
        see `speechtok.lm.sampling.decode_lenient` for unfinished samples)."""
        K = self.num_codebooks
        seq, n = tokens.tokens, tokens.lengths.clone()
        B = seq.shape[0]
        if self.flat:
            if seq.dim() != 2:
                raise CodesError(f"flat tokens must be [B, L], got {tuple(seq.shape)}")
            if self.add_bos:
                if B and (seq[:, 0] != self.special_id("bos")).any():
                    raise CodesError("expected bos at position 0")
                seq, n = seq[:, 1:], n - 1
            if self.add_eos:
                n = n - 1
                if B and (n < 0).any() or B and (seq[torch.arange(B), n.clamp_min(0)] != self.special_id("eos")).any():
                    raise CodesError("expected eos after the last token")
            if bool((n % K != 0).any()):
                raise CodesError(f"token lengths {n.tolist()} are not multiples of K={K}")
            L = (seq.shape[1] // K) * K
            grid = seq[:, :L].reshape(B, -1, K).transpose(1, 2)
            n = n // K
        else:
            if seq.dim() != 3 or seq.shape[1] != K:
                raise CodesError(f"parallel tokens must be [B, K={K}, L], got {tuple(seq.shape)}")
            grid = seq
        if self.pattern == "delay":
            if bool(((n > 0) & (n < K)).any()):
                raise CodesError(f"delay-pattern lengths {n.tolist()} are shorter than K={K} columns")
            cols = grid.shape[-1]
            is_code = torch.zeros(B, K, cols, dtype=torch.bool, device=grid.device)
            T = max(cols - (K - 1), 0)
            n = (n - (K - 1)).clamp_min(0)
            t = torch.arange(cols, device=grid.device)
            for k in range(K):
                is_code[:, k] = (t[None] >= k) & (t[None] < k + n[:, None])
            inside = t[None, None, :] < (n + (K - 1) * (n > 0))[:, None, None]
            bad = inside & ~is_code & (grid != self.special_id("hole"))
            if bad.any():
                b, k, c = (int(i) for i in bad.nonzero()[0])
                raise CodesError(f"token {int(grid[b, k, c])} at item {b}, codebook {k}, column {c} should be hole")
            grid = torch.stack([grid[:, k, k:k + T] for k in range(K)], 1)
        T = grid.shape[-1]
        valid = torch.arange(T, device=grid.device)[None, :] < n[:, None]
        codes = grid - self.codebook_offsets().to(grid.device)[None, :, None]
        sizes = torch.tensor(self.codebook_sizes, device=grid.device)[None, :, None]
        bad = valid[:, None, :] & ((codes < 0) | (codes >= sizes))
        if bad.any():
            b, k, t = (int(i) for i in bad.nonzero()[0])
            raise CodesError(f"token {int(grid[b, k, t])} at item {b}, frame {t} is not a code of codebook {k}")
        T_out = int(n.max()) if B else 0  # no all-padding frames beyond the longest item
        return codes.masked_fill(~valid[:, None, :], -1)[..., :T_out], n

    def make_codes(self, codes: torch.Tensor, lengths: torch.Tensor, like: Optional[Codes] = None) -> Codes:
        """Wrap ``[B, K, T]`` codes as `Codes` with metadata from ``like`` or, without it, this layout."""
        if like is not None:
            meta = dict(frame_rate=like.frame_rate, sample_rate=like.sample_rate, model_id=like.model_id,
                        n_semantic=min(like.n_semantic, self.num_codebooks))
        else:
            if self.model_id is None or self.frame_rate is None or self.sample_rate is None:
                raise CodesError("this layout does not record the model (made without TokenLayout.for_codes): "
                                 "pass like=<Codes of that model>")
            meta = dict(frame_rate=self.frame_rate, sample_rate=self.sample_rate, model_id=self.model_id,
                        n_semantic=self.n_semantic)
        return Codes.from_tensor(codes, lengths, codebook_sizes=self.codebook_sizes, **meta).validate()

    def decode(self, tokens: LMTokens, like: Optional[Codes] = None) -> Codes:
        """`LMTokens` -> `Codes`; metadata (model id, rates) from the layout, or from ``like`` if given."""
        codes, n = self.decode_tensor(tokens)
        return self.make_codes(codes, n, like)


def flatten(codes: Codes, **kw) -> LMTokens:
    """Shortcut: `TokenLayout.for_codes(codes, **kw).encode(codes)`."""
    return TokenLayout.for_codes(codes, **kw).encode(codes)
