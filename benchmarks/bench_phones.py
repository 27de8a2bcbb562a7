"""The runner's phone metrics: how much phone information a tokenizer's tokens carry, on the
phone alignments of the benchmark data (a manifest's ``phones`` TSVs; the packaged bench-mini set
has them for every utterance).

For one tokenizer at ``k`` codebooks, over the utterances that have an alignment:

- ``pnmi``: phone-normalised mutual information I(phone; code) / H(phone) of the *first*
  codebook's codes against the phone under each frame's centre, silence frames left out (HuBERT's
  PNMI; `phone_metrics.pnmi_purity`). The first codebook is the semantic one of a split-RVQ codec
  and the only one of a units tokenizer; the same for every ``k`` of a tokenizer. 95 % interval:
  estimate +- 1.96 SD over utterance resamplings.
- ``abx_within`` / ``abx_across``: phone ABX error of the first ``k`` codebooks, each frame a
  one-hot vector per codebook (ZeroSpeech's ABX on discrete units; the angular distance of two
  frames is ``arccos(agreeing codebooks / k) / pi``, `phone_metrics.code_distances`), DTW over
  the frames of each item, reduced as libri-light's ``eval_ABX``. ``mode="phone"`` (default):
  items are single phones matched on speaker only, any context (ZeroSpeech 2024's phoneme ABX);
  a few seconds per speaker, as in bench-mini, give the within-context triphone ABX no cells.
  ``mode="triphone"``: ZeroSpeech 2021's within-context triphone ABX, for data with many
  utterances per speaker. 95 % interval: percentiles over speaker resamplings.

Frame ``j`` of the codes is centred at ``(j + 0.5) / frame_rate`` seconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from . import phone_metrics as P

PHONE_KEYS = ("pnmi", "abx_within", "abx_across")
ABX_MODES = ("phone", "triphone")


@dataclass(frozen=True)
class Alignment:
    """The phone alignment of one utterance: rows ``(start_s, end_s, phone)``."""

    id: str
    speaker: str
    phones: tuple


def load_alignments(utts: Sequence) -> dict[str, Alignment]:
    """``{utterance id: Alignment}`` for the utterances with a ``phones`` file (others left out)."""
    out = {}
    for u in utts:
        path = getattr(u, "phones", None)
        if path:
            try:
                rows = P.read_phones(path)
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: not a phone alignment (start_s<TAB>end_s<TAB>phone): {e}") from e
            out[u.id] = Alignment(u.id, u.speaker or u.id, tuple(rows))
    return out


def pnmi_score(codes: Sequence[np.ndarray], ids: Sequence[str], alignments: dict[str, Alignment],
               frame_rate: float, *, bootstrap: int = 200, seed: int = 0) -> tuple[float, tuple, int]:
    """``(pnmi, 95 % interval, labelled speech frames)`` of the first codebook of ``codes[i] [K, T_i]``
    (utterance ``ids[i]``, ``frame_rate`` Hz) against the alignments; NaN without labelled frames."""
    nan = float("nan")
    labels, units = [], []
    for c, i in zip(codes, ids):
        if i in alignments:
            lab = P.frame_labels(list(alignments[i].phones), c.shape[1], frame_rate, 0.5 / frame_rate)
            keep = P.speech_mask(lab)
            labels.append(lab[keep])
            units.append(np.asarray(c[0])[keep])
    n = sum(len(x) for x in labels)
    if not n:
        return nan, (nan, nan), 0
    est = P.pnmi_purity(np.concatenate(labels), np.concatenate(units))["pnmi"]
    sd = P.bootstrap_pnmi(labels, units, n=bootstrap, seed=seed) if bootstrap and len(labels) > 1 else nan
    return est, (est - 1.96 * sd, est + 1.96 * sd), n


def abx_scores(codes: Sequence[np.ndarray], ids: Sequence[str], alignments: dict[str, Alignment],
               frame_rate: float, k: int, *, mode: str = "phone", bootstrap: int = 200, seed: int = 0
               ) -> tuple[dict, dict, dict]:
    """``(means, ci, counts)`` of ``abx_within``/``abx_across`` of the first ``k`` codebooks as
    one-hot frames; NaN where ABX has no cell. ``counts``: ABX items and triplets."""
    if mode not in ABX_MODES:
        raise ValueError(f"ABX mode {mode!r}: expected one of {', '.join(ABX_MODES)}")
    nan = float("nan")
    means, ci = {"abx_within": nan, "abx_across": nan}, {"abx_within": (nan, nan), "abx_across": (nan, nan)}
    counts = {"abx_items": 0, "abx_triplets_within": 0, "abx_triplets_across": 0}
    items, segs = [], []
    make = P.phone_items if mode == "phone" else P.triphone_items
    for c, i in zip(codes, ids):
        if i not in alignments:
            continue
        a = alignments[i]
        feats = torch.from_numpy(np.ascontiguousarray(np.asarray(c[:k]).T)).long()  # [T, k]
        for it in make(list(a.phones), a.id, a.speaker):
            items.append(it)
            segs.append(P.item_frames(feats, it, frame_rate, 0.5 / frame_rate))
    if not items:
        return means, ci, counts
    cells = P.abx_cells(items, segs, seed=seed, distance=P.code_distances)
    counts["abx_items"] = cells["n_items"]
    for m in ("within", "across"):
        counts[f"abx_triplets_{m}"] = int(sum(c[5] for c in cells[m]))
        score = P.abx_score(cells[m])
        means[f"abx_{m}"] = score
        if bootstrap and not math.isnan(score):
            ci[f"abx_{m}"] = P.bootstrap_abx(cells[m], n=bootstrap, seed=seed)
    return means, ci, counts


def phone_scores(codes: Sequence[np.ndarray], ids: Sequence[str], alignments: dict[str, Alignment],
                 frame_rate: float, k: int, *, mode: str = "phone", bootstrap: int = 200, seed: int = 0
                 ) -> tuple[dict, dict, dict]:
    """`pnmi_score` and `abx_scores` together: ``(means, ci, counts)`` of `PHONE_KEYS`, with
    ``counts`` also giving the utterances with an alignment and the labelled speech frames."""
    if mode not in ABX_MODES:
        raise ValueError(f"ABX mode {mode!r}: expected one of {', '.join(ABX_MODES)}")
    pnmi, pci, frames = pnmi_score(codes, ids, alignments, frame_rate, bootstrap=bootstrap, seed=seed)
    means, ci, counts = abx_scores(codes, ids, alignments, frame_rate, k, mode=mode, bootstrap=bootstrap, seed=seed)
    counts = {"utterances": sum(i in alignments for i in ids), "frames": frames, **counts}
    return {"pnmi": pnmi, **means}, {"pnmi": pci, **ci}, counts
