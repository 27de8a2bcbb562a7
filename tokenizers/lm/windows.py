"""Fixed-length LM training windows cut on frame boundaries, for every layout pattern.

Each item's codes are cut into windows of ``frames`` frames starting every ``hop`` frames (the
last one may be shorter; shorter than ``min_frames`` is dropped). A window is encoded on its own by
the layout, so the delay pattern's holes frame every window and each window decodes alone;
``bos`` marks only a window that starts the item and ``eos`` only one that ends it (a window in the
middle of an utterance is a continuation). Every window is padded to the same length,
`TokenLayout.frame_tokens(frames)`, so a batch of windows is one dense tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..codes import Codes
from .layout import LMTokens, TokenLayout


@dataclass(frozen=True, eq=False)
class LMWindows:
    """``N`` windows: ``tokens`` (`LMTokens`, ``[N, L]`` or ``[N, K, L]``), their ``attention_mask``
    bool ``[N, L]`` and ``labels`` (``tokens`` with ``-100`` at padding and holes), and where each
    came from: ``item`` ``[N]`` (index in the batch) and ``start`` ``[N]`` (first frame)."""

    tokens: LMTokens
    attention_mask: torch.Tensor
    labels: torch.Tensor
    item: torch.Tensor
    start: torch.Tensor

    def __len__(self) -> int:
        return int(self.item.numel())


def make_windows(layout: TokenLayout, codes: Codes, frames: int, hop: Optional[int] = None,
                 min_frames: int = 1) -> LMWindows:
    """Cut ``codes`` ``[B, K, T]`` into windows of ``frames`` frames every ``hop`` (default ``frames``)."""
    hop = frames if hop is None else hop
    if frames < 1 or hop < 1 or not 1 <= min_frames <= frames:
        raise ValueError(f"need frames >= 1, hop >= 1 and 1 <= min_frames <= frames (got {frames}, {hop}, {min_frames})")
    codes.validate()
    layout.check_codes(codes)
    if codes.num_codebooks > layout.num_codebooks:
        codes = codes.take_codebooks(layout.num_codebooks)
    codes = codes.with_(durations=None, audio_lengths=None)
    L = layout.frame_tokens(frames)
    pad = layout.special_id("pad")
    rows, lens, items, starts = [], [], [], []
    for b in range(codes.batch_size):
        T = int(codes.lengths[b])
        for s in range(0, max(T, 1), hop):
            w = min(frames, T - s)
            if w < min_frames:
                continue
            piece = codes.codes[b:b + 1, :, s:s + w]
            lay = replace(layout, add_bos=layout.add_bos and s == 0, add_eos=layout.add_eos and s + w == T)
            tok = lay.encode(Codes.from_tensor(piece, torch.tensor([w]), frame_rate=codes.frame_rate,
                                               codebook_sizes=codes.codebook_sizes, sample_rate=codes.sample_rate,
                                               model_id=codes.model_id, n_semantic=codes.n_semantic))
            row = torch.full((*tok.tokens.shape[1:-1], L), pad, dtype=torch.long)
            row[..., :tok.tokens.shape[-1]] = tok.tokens[0]
            rows.append(row)
            lens.append(int(tok.lengths[0]))
            items.append(b)
            starts.append(s)
            if s + w >= T:
                break
    shape = (0, L) if layout.flat else (0, layout.num_codebooks, L)
    tokens = LMTokens(torch.stack(rows) if rows else torch.zeros(shape, dtype=torch.long),
                      torch.tensor(lens, dtype=torch.long))
    return LMWindows(tokens=tokens, attention_mask=layout.attention_mask(tokens), labels=layout.labels(tokens),
                     item=torch.tensor(items, dtype=torch.long), start=torch.tensor(starts, dtype=torch.long))


def window_codes(layout: TokenLayout, windows: LMWindows, like: Optional[Codes] = None) -> Codes:
    """Decode every window back to `Codes` ``[N, K, frames]`` (each window holds whole frames)."""
    codes, n = [], []
    pad = layout.special_id("pad")
    for i in range(len(windows)):
        tok = windows.tokens.tokens[i:i + 1]
        m = int(windows.tokens.lengths[i])
        lay = layout
        if layout.flat:
            seq = tok[0, :m]
            bos = layout.add_bos and m > 0 and int(seq[0]) == layout.special_id("bos")
            eos = layout.add_eos and m > 0 and int(seq[-1]) == layout.special_id("eos")
            lay = replace(layout, add_bos=bool(bos), add_eos=bool(eos))
        c, l = lay.decode_tensor(LMTokens(tok.masked_fill(~windows.attention_mask[i:i + 1] if layout.flat else
                                                          ~windows.attention_mask[i:i + 1, None], pad),
                                          windows.tokens.lengths[i:i + 1]))
        codes.append(c[0])
        n.append(int(l[0]))
    T = max(n, default=0)
    out = torch.full((len(codes), layout.num_codebooks, T), -1, dtype=torch.long)
    for i, c in enumerate(codes):
        out[i, :, :n[i]] = c[:, :n[i]]
    return layout.make_codes(out, torch.tensor(n, dtype=torch.long), like)
