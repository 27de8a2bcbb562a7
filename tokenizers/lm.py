"""`Codes` <-> flat LM token ids, exactly invertible.

One vocabulary: ``offset`` (ids below it are left to e.g. text tokens), then codebook 0's codes,
codebook 1's, ..., then the special tokens. Code ``c`` of codebook ``k`` is
``offset + sum(codebook_sizes[:k]) + c``.

Patterns (``[B, K, T]`` codes in):
    ``flatten``  time-major single stream ``[B, T*K]``: frame 0 codebooks 0..K-1, frame 1, ...
    ``delay``    MusicGen's delay pattern: codebook ``k`` shifted right by ``k`` frames, giving
                 ``K`` parallel streams ``[B, K, T+K-1]`` whose holes hold the ``pad`` special;
                 ``flat=True`` flattens that grid time-major to ``[B, (T+K-1)*K]``.

``bos``/``eos`` wrap single-stream sequences; padding past ``lengths`` holds ``pad``.
Durations (after dedup/BPE) are not part of the token stream: keep them beside it if needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from .codes import Codes, CodesError

SPECIALS = ("pad", "bos", "eos")


@dataclass(frozen=True, eq=False)
class LMTokens:
    """Token ids: ``tokens`` int64 ``[B, L]`` (single stream) or ``[B, K, L]`` (parallel streams);
    ``lengths`` ``[B]`` valid positions (``pad`` after them)."""

    tokens: torch.Tensor
    lengths: torch.Tensor


@dataclass(frozen=True)
class TokenLayout:
    """How codes map to LM ids (see module docstring). Build with `TokenLayout.for_codes`."""

    codebook_sizes: tuple[int, ...]
    pattern: Literal["flatten", "delay"] = "flatten"
    flat: bool = True
    offset: int = 0
    add_bos: bool = False
    add_eos: bool = False

    def __post_init__(self):
        if self.pattern not in ("flatten", "delay"):
            raise ValueError(f"pattern must be 'flatten' or 'delay', got {self.pattern!r}")
        if self.pattern == "flatten" and not self.flat:
            raise ValueError("pattern 'flatten' is always flat")
        if not self.flat and (self.add_bos or self.add_eos):
            raise ValueError("bos/eos wrap single-stream (flat) sequences only")
        if not self.codebook_sizes or min(self.codebook_sizes) < 1 or self.offset < 0:
            raise ValueError(f"bad codebook_sizes {self.codebook_sizes} / offset {self.offset}")

    @classmethod
    def for_codes(cls, codes: Codes, **kw) -> "TokenLayout":
        return cls(codebook_sizes=tuple(codes.codebook_sizes), **kw)

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

    # ----------------------------------------------------------------- codes -> tokens
    def encode(self, codes: Codes) -> LMTokens:
        """`Codes` ``[B, K, T]`` -> `LMTokens` (exactly invertible with `decode`)."""
        codes.validate()
        if tuple(codes.codebook_sizes) != self.codebook_sizes:
            raise CodesError(f"layout is for codebook sizes {self.codebook_sizes}, codes have {codes.codebook_sizes}")
        B, K, T = codes.codes.shape
        pad = self.special_id("pad")
        dev = codes.codes.device
        ids = codes.codes + self.codebook_offsets().to(dev)[None, :, None]
        ids = ids.masked_fill(~codes.mask()[:, None, :], pad)
        n = codes.lengths.clone()
        if self.pattern == "delay":
            grid = torch.full((B, K, T + K - 1), pad, dtype=torch.long, device=dev)
            for k in range(K):
                grid[:, k, k:k + T] = ids[:, k]
            ids, n = grid, n + (K - 1) * (n > 0)
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

    # ----------------------------------------------------------------- tokens -> codes
    def decode_tensor(self, tokens: LMTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """`LMTokens` -> ``(codes [B, K, T] with -1 padding, lengths [B])``; checks every id."""
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
                if B and (seq[torch.arange(B), n] != self.special_id("eos")).any():
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
            T = grid.shape[-1] - (K - 1)
            grid = torch.stack([grid[:, k, k:k + T] for k in range(K)], 1)
            n = (n - (K - 1)).clamp_min(0)
        T = grid.shape[-1]
        valid = torch.arange(T, device=grid.device)[None, :] < n[:, None]
        codes = grid - self.codebook_offsets().to(grid.device)[None, :, None]
        sizes = torch.tensor(self.codebook_sizes, device=grid.device)[None, :, None]
        bad = valid[:, None, :] & ((codes < 0) | (codes >= sizes))
        if bad.any():
            b, k, t = (int(i) for i in bad.nonzero()[0])
            raise CodesError(f"token {int(grid[b, k, t])} at item {b}, frame {t} is not a code of codebook {k}")
        return codes.masked_fill(~valid[:, None, :], -1), n

    def decode(self, tokens: LMTokens, like: Codes) -> Codes:
        """`LMTokens` -> `Codes`, taking metadata (model id, rates, ...) from ``like``."""
        codes, n = self.decode_tensor(tokens)
        return Codes.from_tensor(codes, n, frame_rate=like.frame_rate, codebook_sizes=self.codebook_sizes,
                                 sample_rate=like.sample_rate, model_id=like.model_id,
                                 n_semantic=like.n_semantic).validate()


def flatten(codes: Codes, **kw) -> LMTokens:
    """Shortcut: `TokenLayout.for_codes(codes, **kw).encode(codes)`."""
    return TokenLayout.for_codes(codes, **kw).encode(codes)
