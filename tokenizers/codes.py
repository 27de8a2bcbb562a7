"""`Codes`: the typed container that crosses every speechtok boundary.

Axis order is fixed everywhere: codes are ``[B, K, T]`` (batch, codebook, frame), int64, with
``-1`` at padding frames (frames ``t >= lengths[b]``).

Time: ``frame_rate`` is the rate (Hz) of the frame grid the tokenizer works on. When
``durations`` is set (after dedup, BPE or syllable pooling) token ``t`` of item ``b`` spans
``durations[b, t]`` frames of that grid, so time stays exact and the transform reversible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch


class CodesError(ValueError):
    """A `Codes` object (or a file holding one) is malformed or does not fit its use."""


@dataclass(frozen=True, eq=False)
class Codes:
    """Discrete speech tokens with everything needed to time, decode and count them.

    Attributes:
        codes: int64 ``[B, K, T]``; ``-1`` at padding (``t >= lengths[b]``).
        lengths: int64 ``[B]``, valid frames per item.
        frame_rate: frames per second of the frame grid (Hz, may be fractional, e.g. 12.5).
        codebook_sizes: one size per codebook (``len == K``); valid codes are ``0 <= c < size``.
        sample_rate: audio sample rate (Hz) of the tokenizer that made the codes.
        model_id: ``"name@hash"``: the exact model (weights hash) the codes mean something for.
        n_semantic: leading codebooks distilled from a semantic teacher (0 if none).
        durations: optional int64 ``[B, T]``: grid frames each token spans (>= 1 where valid,
            0 at padding). ``None`` means every token spans one frame.
        audio_lengths: optional int64 ``[B]``: samples of the original audio (at
            ``sample_rate``), to trim decoded audio exactly.
    """

    codes: torch.Tensor
    lengths: torch.Tensor
    frame_rate: float
    codebook_sizes: tuple[int, ...]
    sample_rate: int
    model_id: str
    n_semantic: int = 0
    durations: Optional[torch.Tensor] = None
    audio_lengths: Optional[torch.Tensor] = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_tensor(cls, codes: torch.Tensor, lengths: Optional[torch.Tensor] = None, **meta) -> "Codes":
        """Wrap a ``[B, K, T]`` tensor; padding past ``lengths`` is set to -1."""
        if codes.dim() != 3:
            raise CodesError(f"codes must be [B, K, T], got shape {tuple(codes.shape)}")
        codes = codes.long()
        B, _, T = codes.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        lengths = torch.as_tensor(lengths, dtype=torch.long).to(codes.device)
        valid = torch.arange(T, device=codes.device)[None, :] < lengths[:, None]
        codes = codes.masked_fill(~valid[:, None, :], -1)
        meta.setdefault("codebook_sizes", ())
        meta["codebook_sizes"] = tuple(int(s) for s in meta["codebook_sizes"])
        return cls(codes=codes, lengths=lengths, **meta)

    # ----------------------------------------------------------------- shape helpers
    @property
    def batch_size(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_codebooks(self) -> int:
        return int(self.codes.shape[1])

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[2])

    def mask(self) -> torch.Tensor:
        """Bool ``[B, T]``: True at valid frames."""
        return torch.arange(self.num_frames, device=self.codes.device)[None, :] < self.lengths[:, None]

    def grid_frames(self) -> torch.Tensor:
        """int64 ``[B]``: frames of the ``frame_rate`` grid each item covers."""
        if self.durations is None:
            return self.lengths.clone()
        return (self.durations * self.mask()).sum(dim=1)

    def seconds(self) -> torch.Tensor:
        """float64 ``[B]``: duration of each item in seconds."""
        if self.audio_lengths is not None:
            return self.audio_lengths.double() / self.sample_rate
        return self.grid_frames().double() / self.frame_rate

    # ----------------------------------------------------------------- checks
    def validate(self) -> "Codes":
        """Raise `CodesError` naming the problem if anything is inconsistent; return self."""
        c = self.codes
        if not isinstance(c, torch.Tensor) or c.dim() != 3:
            raise CodesError(f"codes must be a [B, K, T] tensor, got {getattr(c, 'shape', type(c))}")
        if c.dtype != torch.long:
            raise CodesError(f"codes must be int64, got {c.dtype}")
        B, K, T = c.shape
        if len(self.codebook_sizes) != K:
            raise CodesError(f"codebook_sizes has {len(self.codebook_sizes)} entries but codes have K={K} codebooks")
        if any(int(s) < 1 for s in self.codebook_sizes):
            raise CodesError(f"codebook sizes must be >= 1, got {self.codebook_sizes}")
        if tuple(self.lengths.shape) != (B,):
            raise CodesError(f"lengths must be [B]=[{B}], got {tuple(self.lengths.shape)}")
        if B and (int(self.lengths.min()) < 0 or int(self.lengths.max()) > T):
            raise CodesError(f"lengths must lie in [0, T={T}], got {self.lengths.tolist()}")
        if not (self.frame_rate > 0 and math.isfinite(self.frame_rate)):
            raise CodesError(f"frame_rate must be a positive number, got {self.frame_rate}")
        if int(self.sample_rate) <= 0:
            raise CodesError(f"sample_rate must be positive, got {self.sample_rate}")
        if not (0 <= self.n_semantic <= K):
            raise CodesError(f"n_semantic={self.n_semantic} outside [0, K={K}]")
        m = self.mask()[:, None, :].expand(B, K, T)
        if (c[~m] != -1).any():
            raise CodesError("padding frames (t >= lengths) must hold -1")
        sizes = torch.tensor(self.codebook_sizes, device=c.device)[None, :, None].expand(B, K, T)
        bad = m & ((c < 0) | (c >= sizes))
        if bad.any():
            b, k, t = (int(i) for i in bad.nonzero()[0])
            raise CodesError(
                f"code {int(c[b, k, t])} at item {b}, codebook {k}, frame {t} is outside [0, {self.codebook_sizes[k]})"
            )
        if self.durations is not None:
            d = self.durations
            if tuple(d.shape) != (B, T):
                raise CodesError(f"durations must be [B, T]=[{B}, {T}], got {tuple(d.shape)}")
            if (d[self.mask()] < 1).any():
                raise CodesError("durations must be >= 1 at valid tokens")
        if self.audio_lengths is not None:
            if tuple(self.audio_lengths.shape) != (B,):
                raise CodesError(f"audio_lengths must be [B]=[{B}], got {tuple(self.audio_lengths.shape)}")
            if B and int(self.audio_lengths.min()) < 0:
                raise CodesError(f"audio_lengths must be >= 0, got {self.audio_lengths.tolist()[:8]}")
        return self

    def check_model(self, model_id: str) -> None:
        """Fail loudly when these codes were made by another model than ``model_id``."""
        if self.model_id != model_id:
            raise CodesError(
                f"codes were made by model {self.model_id!r}, not {model_id!r}: "
                "decode them with the model that encoded them"
            )

    # ----------------------------------------------------------------- transforms
    def with_(self, **changes) -> "Codes":
        """A copy with some fields replaced (dataclasses.replace)."""
        return replace(self, **changes)

    def to(self, device) -> "Codes":
        opt = lambda x: None if x is None else x.to(device)  # noqa: E731
        return replace(self, codes=self.codes.to(device), lengths=self.lengths.to(device),
                       durations=opt(self.durations), audio_lengths=opt(self.audio_lengths))

    def take_codebooks(self, k: int) -> "Codes":
        """The first ``k`` codebooks (a lower bitrate of an RVQ); ``1 <= k <= K``."""
        if not 1 <= k <= self.num_codebooks:
            raise CodesError(f"take_codebooks({k}): need 1 <= k <= K={self.num_codebooks}")
        return replace(self, codes=self.codes[:, :k].contiguous(), codebook_sizes=self.codebook_sizes[:k],
                       n_semantic=min(self.n_semantic, k))

    def unbatch(self) -> list["Codes"]:
        """One ``B=1`` Codes per item, trimmed to its length."""
        out = []
        for b in range(self.batch_size):
            n = int(self.lengths[b])
            out.append(replace(
                self,
                codes=self.codes[b:b + 1, :, :n].clone(),
                lengths=self.lengths[b:b + 1].clone(),
                durations=None if self.durations is None else self.durations[b:b + 1, :n].clone(),
                audio_lengths=None if self.audio_lengths is None else self.audio_lengths[b:b + 1].clone(),
            ))
        return out

    @staticmethod
    def batch(items: Sequence["Codes"]) -> "Codes":
        """Pad and stack Codes of the same model into one batch (inverse of `unbatch`)."""
        if not items:
            raise CodesError("Codes.batch needs at least one item")
        first = items[0]
        for it in items[1:]:
            for name in ("frame_rate", "codebook_sizes", "sample_rate", "model_id", "n_semantic"):
                if getattr(it, name) != getattr(first, name):
                    raise CodesError(f"cannot batch Codes with different {name}: "
                                     f"{getattr(first, name)!r} vs {getattr(it, name)!r}")
            if (it.durations is None) != (first.durations is None) or \
               (it.audio_lengths is None) != (first.audio_lengths is None):
                raise CodesError("cannot batch Codes where only some have durations/audio_lengths")
        T = max(it.num_frames for it in items)
        K = first.num_codebooks
        dev = first.codes.device
        codes = torch.full((len(items), K, T), -1, dtype=torch.long, device=dev)
        durs = None if first.durations is None else torch.zeros(len(items), T, dtype=torch.long, device=dev)
        lengths, alens = [], []
        for i, it in enumerate(items):
            if it.batch_size != 1:
                raise CodesError("Codes.batch takes B=1 items (use unbatch first)")
            n = int(it.lengths[0])
            codes[i, :, :n] = it.codes[0, :, :n]
            if durs is not None:
                durs[i, :n] = it.durations[0, :n]
            lengths.append(n)
            if it.audio_lengths is not None:
                alens.append(int(it.audio_lengths[0]))
        return replace(first, codes=codes, lengths=torch.tensor(lengths, dtype=torch.long, device=dev),
                       durations=durs,
                       audio_lengths=torch.tensor(alens, dtype=torch.long, device=dev) if alens else None)

    def expand(self) -> "Codes":
        """Undo run-length ``durations``: repeat each token ``durations[b, t]`` times on the frame grid.

        The result has ``durations=None`` and ``lengths = grid_frames()``; a no-op without durations.
        """
        if self.durations is None:
            return self
        n = self.grid_frames()
        T = int(n.max()) if self.batch_size else 0
        out = torch.full((self.batch_size, self.num_codebooks, T), -1, dtype=torch.long, device=self.codes.device)
        for b in range(self.batch_size):
            m = int(self.lengths[b])
            out[b, :, : int(n[b])] = self.codes[b, :, :m].repeat_interleave(self.durations[b, :m], dim=1)
        return replace(self, codes=out, lengths=n, durations=None)

    # ----------------------------------------------------------------- rates
    def token_rate(self) -> float:
        """Valid tokens per second over the whole batch, all codebooks counted."""
        secs = float(self.grid_frames().sum()) / self.frame_rate
        return float(self.lengths.sum()) * self.num_codebooks / secs if secs > 0 else 0.0

    def bitrate(self) -> float:
        """Nominal bits per second: ``frame_rate * sum(log2(size))``.

        With ``durations`` (deduped/BPE/pooled tokens) the frame rate is the effective one:
        valid tokens per second of audio, measured on this batch.
        """
        bits = sum(math.log2(s) for s in self.codebook_sizes)
        if self.durations is None:
            return self.frame_rate * bits
        secs = float(self.grid_frames().sum()) / self.frame_rate
        return float(self.lengths.sum()) * bits / secs if secs > 0 else 0.0

    def entropy_bitrate(self) -> float:
        """Bits per second if each codebook were entropy-coded with its empirical unigram
        distribution on this batch (a bound on what an entropy coder would need)."""
        secs = float(self.grid_frames().sum()) / self.frame_rate
        if secs <= 0:
            return 0.0
        m = self.mask()
        total_bits = 0.0
        for k, size in enumerate(self.codebook_sizes):
            vals = self.codes[:, k][m]
            counts = torch.bincount(vals, minlength=size).double()
            p = counts[counts > 0] / counts.sum()
            total_bits += float(-(p * p.log2()).sum()) * vals.numel()
        return total_bits / secs

    def __repr__(self) -> str:
        return (f"Codes(B={self.batch_size}, K={self.num_codebooks}, T={self.num_frames}, "
                f"frame_rate={self.frame_rate}, codebook_sizes={list(self.codebook_sizes)}, "
                f"sample_rate={self.sample_rate}, model_id={self.model_id!r}, n_semantic={self.n_semantic}"
                f"{', durations' if self.durations is not None else ''})")
