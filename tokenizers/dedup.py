"""Run-length dedup of any `Codes` (SSL units or codec frames), exactly invertible.

``dedup`` merges runs of identical consecutive frames (all ``K`` codebooks equal) into one token
whose ``durations`` entry counts the grid frames it spans (summing existing durations if the
input already had them). ``undedup`` repeats each token ``durations`` times. For input without
durations, ``undedup(dedup(c))`` equals ``c`` exactly; ``frame_rate`` stays the frame grid, so
time is exact throughout (textlesslib's deduplicated units with durations).
"""
from __future__ import annotations

import torch

from .codes import Codes, CodesError


def dedup(codes: Codes) -> Codes:
    """Merge repeated consecutive frames. ``[B, K, T]`` -> ``[B, K, T']`` with ``durations [B, T']``."""
    c = codes.codes
    B, K, T = c.shape
    items, durs = [], []
    for b in range(B):
        n = int(codes.lengths[b])
        x = c[b, :, :n]
        d = codes.durations[b, :n] if codes.durations is not None else torch.ones(n, dtype=torch.long, device=c.device)
        if n == 0:
            items.append(x)
            durs.append(d)
            continue
        change = torch.ones(n, dtype=torch.bool, device=c.device)
        change[1:] = (x[:, 1:] != x[:, :-1]).any(dim=0)
        starts = change.nonzero().squeeze(1)
        seg = torch.cumsum(change.long(), 0) - 1  # run index of each frame
        run_d = torch.zeros(len(starts), dtype=torch.long, device=c.device).index_add_(0, seg, d.long())
        items.append(x[:, starts])
        durs.append(run_d)
    T2 = max((x.shape[1] for x in items), default=0)
    out = torch.full((B, K, T2), -1, dtype=torch.long, device=c.device)
    dur = torch.zeros((B, T2), dtype=torch.long, device=c.device)
    for b, (x, d) in enumerate(zip(items, durs)):
        out[b, :, : x.shape[1]] = x
        dur[b, : d.shape[0]] = d
    lengths = torch.tensor([x.shape[1] for x in items], dtype=torch.long, device=c.device)
    return codes.with_(codes=out, lengths=lengths, durations=dur)


def undedup(codes: Codes) -> Codes:
    """Repeat each token ``durations`` times: back to one token per grid frame (``durations=None``)."""
    if codes.durations is None:
        return codes
    c, d = codes.codes, codes.durations
    B, K, _ = c.shape
    if (d[codes.mask()] < 1).any():
        raise CodesError("undedup: durations must be >= 1 at valid tokens")
    items = []
    for b in range(B):
        n = int(codes.lengths[b])
        items.append(torch.repeat_interleave(c[b, :, :n], d[b, :n].long(), dim=1))
    T2 = max((x.shape[1] for x in items), default=0)
    out = torch.full((B, K, T2), -1, dtype=torch.long, device=c.device)
    for b, x in enumerate(items):
        out[b, :, : x.shape[1]] = x
    lengths = torch.tensor([x.shape[1] for x in items], dtype=torch.long, device=c.device)
    return codes.with_(codes=out, lengths=lengths, durations=None)
