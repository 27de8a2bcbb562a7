"""Phone information of speech features and units: frame labels, PNMI / purities, triphone ABX.

Phone alignments are TSV files ``start_s<TAB>end_s<TAB>phone`` (seconds). Phones are normalised by
`normalize_phone`: ARPAbet stress digits are stripped (``AH0`` -> ``AH``; SAMPA phones such as
MBROLA's ``O2``, ``3:``, ``5`` are kept as they are) and every silence symbol (`SILENCE`: ``SIL``,
``sil``, ``_``, ``#``, ``pau``, ``sp``, ``spn``) becomes ``"SIL"``.

Frame labels: frame ``j`` is centred at ``frame_offset_s + j / frame_rate`` seconds and gets the
phone whose ``[start, end)`` holds that centre; frames outside every phone get ``""`` (unlabelled,
always left out). Silence frames are labelled ``"SIL"``; callers choose whether to keep them
(`speech_mask`): the benchmarks here leave them out of PNMI, and ABX never uses them.

PNMI = I(phone; unit) / H(phone) (HuBERT paper); phone purity = E_unit max_phone p(phone | unit);
cluster purity = E_phone max_unit p(unit | phone).

ABX (ZeroSpeech 2017/2021 "within-context" triphone ABX, as libri-light's ``eval_ABX``): items are
triphones ``prev-centre-next`` of three non-silence phones; an item's features are the frames whose
centres lie in ``[prev.start, next.end)`` (libri-light slices ``[ceil(r on - .5), floor(r off - .5))``,
one frame fewer at the end unless ``r off`` is a frame edge). For a context ``(prev, next)`` and
centre phones ``c1 != c2``, A and X are items of ``c1``, B an item of ``c2``, all in that context.
``d(A, X)`` is the DTW of the frame-wise angular distance ``arccos(cos(a, x)) / pi`` (steps
right/down/diagonal) divided by the length of the path (libri-light's ``dtw``). A triplet is an
error when ``d(A, X) > d(B, X)``, half an error on a tie. Within speaker: A, B, X from one speaker,
``A != X``. Across speaker: A and B from speaker ``s``, X from another speaker ``t``. The error of a
cell (context, speaker, c1, c2) (across: also X speaker) is the mean over its triplets; cells are
averaged over contexts (across: over contexts and X speakers together), then over (A/B) speakers,
then over the ordered phone pairs ``(c1, c2)`` -- libri-light's reduction. Caps: at most
``max_per_cell`` items per (context, centre, speaker) and ``max_x_speakers`` X speakers per
(context, c1, A/B speaker), drawn with ``seed`` (libri-light: ``max_size_group=10``,
``max_x_across=5``), and at most ``max_contexts`` contexts.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

SILENCE = frozenset({"SIL", "sil", "_", "#", "pau", "sp", "spn"})
ARPABET = frozenset("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
                    "UH UW V W Y Z ZH AX AXR IX UX DX EL EM EN NX Q WH".split())
UNLABELLED = ""
_STRESS = re.compile(r"([A-Z]{1,3})[012]")


def normalize_phone(p: str) -> str:
    """``"AH1"`` -> ``"AH"`` (ARPAbet stress stripped), silence symbols -> ``"SIL"``, else ``p.strip()``."""
    p = p.strip()
    if p in SILENCE:
        return "SIL"
    m = _STRESS.fullmatch(p)
    return m.group(1) if m and m.group(1) in ARPABET else p


def read_phones(path) -> list[tuple[float, float, str]]:
    """Rows ``(start_s, end_s, phone)`` of a phones TSV, phones as written (see `normalize_phone`)."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            a, b, p = line.split("\t")[:3]
            out.append((float(a), float(b), p.strip()))
    return out


def frame_centres(n_frames: int, frame_rate: float, frame_offset_s: float) -> np.ndarray:
    """Centre of each frame in seconds ``[n_frames]``: ``frame_offset_s + j / frame_rate``."""
    return frame_offset_s + np.arange(n_frames) / frame_rate


def frame_labels(phones, n_frames: int, frame_rate: float, frame_offset_s: float) -> np.ndarray:
    """Normalised phone under each frame's centre, ``[n_frames]`` str; ``""`` where no phone covers it.

    ``phones``: ``(start_s, end_s, phone)`` rows sorted by start; ``frame_rate`` Hz."""
    centres = frame_centres(n_frames, frame_rate, frame_offset_s)
    if not phones:
        return np.full(n_frames, UNLABELLED, dtype=object).astype(str)
    starts = np.array([a for a, _, _ in phones])
    ends = np.array([b for _, b, _ in phones])
    names = np.array([normalize_phone(p) for _, _, p in phones] + [UNLABELLED])
    idx = np.searchsorted(starts, centres, side="right") - 1
    ok = (idx >= 0) & (centres < ends[np.clip(idx, 0, None)])
    return names[np.where(ok, idx, len(phones))]


def speech_mask(labels: np.ndarray) -> np.ndarray:
    """``[N]`` bool: frames labelled with a phone that is not silence."""
    labels = np.asarray(labels)
    return (labels != UNLABELLED) & (labels != "SIL") & ~np.isin(labels, list(SILENCE))


def pnmi_purity(phones: np.ndarray, units: np.ndarray, weights: Optional[np.ndarray] = None) -> dict:
    """PNMI, phone purity, cluster purity and units used of frame ``phones [N]`` vs ``units [N]``.

    Frames labelled ``""`` are left out; ``weights [N]`` (e.g. bootstrap counts) weight frames."""
    phones, units = np.asarray(phones), np.asarray(units)
    keep = phones != UNLABELLED if phones.dtype.kind in "US" else np.ones(len(phones), bool)
    w = np.ones(len(phones)) if weights is None else np.asarray(weights, dtype=float)
    keep &= w > 0
    phones, units, w = phones[keep], units[keep], w[keep]
    pv, pi = np.unique(phones, return_inverse=True)
    uv, ui = np.unique(units, return_inverse=True)
    joint = np.zeros((len(pv), len(uv)))
    np.add.at(joint, (pi, ui), w)
    joint /= joint.sum()
    pp, pu = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / (pp[:, None] * pu[None, :])[nz])).sum()
    hp = -(pp[pp > 0] * np.log(pp[pp > 0])).sum()
    return {"pnmi": float(mi / hp) if hp > 0 else float("nan"), "phone_purity": float(joint.max(0).sum()),
            "cluster_purity": float(joint.max(1).sum()), "units_used": int((pu > 0).sum())}


def bootstrap_pnmi(phones: Sequence[np.ndarray], units: Sequence[np.ndarray], n: int = 200, seed: int = 0,
                   key: str = "pnmi") -> float:
    """Standard deviation of ``key`` over ``n`` resamplings of utterances (lists of ``[T_u]`` labels).

    The plug-in mutual information is biased upwards (about ``(phones - 1)(units - 1) / (2 N)`` nats
    for ``N`` frames, more in a resample with repeated utterances), so a percentile interval would
    sit above the estimate; the SD is the spread to report (``estimate +- 1.96 SD``)."""
    rng = np.random.default_rng(seed)
    lab, uni = np.concatenate(phones), np.concatenate(units)
    utt = np.repeat(np.arange(len(phones)), [len(p) for p in phones])
    vals = [pnmi_purity(lab, uni, np.bincount(rng.integers(0, len(phones), len(phones)),
                                              minlength=len(phones))[utt])[key] for _ in range(n)]
    return float(np.std(vals))


@dataclass(frozen=True)
class Item:
    """One ABX item: triphone ``prev-phone-next`` of utterance ``utt`` spanning ``[onset_s, offset_s)``."""

    utt: str
    speaker: str
    phone: str
    prev: str
    next: str
    onset_s: float
    offset_s: float


def phone_items(phones, utt: str, speaker: str) -> list[Item]:
    """Context-free ABX items of one alignment: every non-silence phone, with an empty context, so
    all items share one context and A/B/X are matched on speaker only ("any-context" phone ABX,
    as ZeroSpeech 2024's; the triphone ABX needs many utterances per speaker to have cells)."""
    return [Item(utt, speaker, p, "", "", a, b) for a, b, p in ((a, b, normalize_phone(p)) for a, b, p in phones)
            if p != "SIL"]


def triphone_items(phones, utt: str, speaker: str) -> list[Item]:
    """Triphone items of one alignment (``(start_s, end_s, phone)`` rows): every phone with a
    non-silence phone on each side, itself not silence; onset/offset span the three phones."""
    ph = [(a, b, normalize_phone(p)) for a, b, p in phones]
    return [Item(utt, speaker, ph[i][2], ph[i - 1][2], ph[i + 1][2], ph[i - 1][0], ph[i + 1][1])
            for i in range(1, len(ph) - 1) if "SIL" not in (ph[i - 1][2], ph[i][2], ph[i + 1][2])]


def item_frames(feats: torch.Tensor, item: Item, frame_rate: float, frame_offset_s: float) -> torch.Tensor:
    """Frames of ``feats [T, D]`` whose centres lie in ``[item.onset_s, item.offset_s)``: ``[n, D]``."""
    c = frame_centres(feats.shape[0], frame_rate, frame_offset_s)
    a, b = np.searchsorted(c, item.onset_s, side="left"), np.searchsorted(c, item.offset_s, side="left")
    return feats[a:b]


def angular_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``arccos(cos(x_i, y_j)) / pi`` in [0, 1] for ``x [N, La, D]``, ``y [N, Lb, D]`` -> ``[N, La, Lb]``."""
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    y = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.bmm(x, y.transpose(1, 2)).clamp(-1.0, 1.0).acos() / math.pi


def code_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Angular distance of one-hot codes: ``x [N, La, k]``, ``y [N, Lb, k]`` integer codes of ``k``
    codebooks -> ``[N, La, Lb]`` = ``arccos(m / k) / pi`` for ``m`` codebooks that agree: exactly
    `angular_distances` of the concatenated one-hot vectors (ZeroSpeech's ABX on discrete units),
    without building them."""
    k = x.shape[-1]
    m = (x[:, :, None, :] == y[:, None, :, :]).sum(-1, dtype=torch.float32)
    return (m / k).clamp(0.0, 1.0).acos() / math.pi


def dtw_batch(dist: torch.Tensor, len_a: torch.Tensor, len_b: torch.Tensor) -> torch.Tensor:
    """DTW cost / path length ``[N]`` of frame distances ``dist [N, La, Lb]`` (valid ``len_a x len_b``).

    Steps (i-1, j), (i, j-1), (i-1, j-1); ties go diagonal, then (i, j-1), then (i-1, j), so the path
    length is that of libri-light's backtrack. The cost matrix is swept by anti-diagonals ``k = i + j``
    stored by ``i`` (``[N, La]``), so each of the La + Lb - 1 steps is a few shifted slices."""
    N, La, Lb = dist.shape
    len_a, len_b = torch.as_tensor(len_a, dtype=torch.long), torch.as_tensor(len_b, dtype=torch.long)
    K = La + Lb - 1
    i = torch.arange(La)
    j = torch.arange(K)[:, None] - i[None, :]  # [K, La]
    valid = (j >= 0) & (j < Lb)
    dsk = dist.float()[:, i[None, :].expand(K, La), j.clamp(0, Lb - 1)].masked_fill(~valid[None], math.inf)
    inf_col, zero_col = torch.full((N, 1), math.inf), torch.zeros((N, 1))
    prev1 = prev2 = torch.full((N, La), math.inf)
    l1 = l2 = torch.zeros((N, La))
    out = torch.full((N,), math.nan)
    target = len_a + len_b - 2
    rows = torch.arange(N)
    for k in range(K):
        if k == 0:
            cur, curl = dsk[:, 0].clone(), torch.ones((N, La))
        else:
            cand = torch.stack([torch.cat([inf_col, prev2[:, :-1]], 1), prev1,
                                torch.cat([inf_col, prev1[:, :-1]], 1)], -1)  # diag, left, up
            lens = torch.stack([torch.cat([zero_col, l2[:, :-1]], 1), l1, torch.cat([zero_col, l1[:, :-1]], 1)], -1)
            best, arg = cand.min(-1)
            cur, curl = best + dsk[:, k], lens.gather(-1, arg[..., None])[..., 0] + 1
        sel = rows[target == k]
        if len(sel):
            out[sel] = cur[sel, len_a[sel] - 1] / curl[sel, len_a[sel] - 1]
        prev2, prev1, l2, l1 = prev1, cur, l1, curl
    return out


def pair_distances(segs: Sequence[torch.Tensor], pairs: np.ndarray, max_cells: int = 1 << 24,
                   distance=angular_distances) -> np.ndarray:
    """``d(segs[p], segs[q])`` (DTW of ``distance``: `angular_distances` of features ``[n, D]``, or
    `code_distances` of integer codes ``[n, k]``) for each row ``(p, q)`` of ``pairs [P, 2]`` -> ``[P]``.

    Pairs are sorted by length and batched so each batch holds at most ``max_cells`` frame pairs."""
    out = np.zeros(len(pairs))
    la = np.array([len(segs[p]) for p in pairs[:, 0]]) if len(pairs) else np.zeros(0, int)
    lb = np.array([len(segs[q]) for q in pairs[:, 1]]) if len(pairs) else np.zeros(0, int)
    order = np.lexsort((lb, la))
    s = 0
    while s < len(order):
        e, mb = s + 1, lb[order[s]]
        while e < len(order) and (e + 1 - s) * la[order[e]] * max(mb, lb[order[e]]) <= max_cells:
            mb = max(mb, lb[order[e]])
            e += 1
        idx = order[s:e]
        A, Bm = int(la[idx].max()), int(lb[idx].max())
        first = segs[pairs[idx[0], 0]]
        D, dt = first.shape[1], first.dtype
        xa, xb = torch.zeros(len(idx), A, D, dtype=dt), torch.zeros(len(idx), Bm, D, dtype=dt)
        for n, t in enumerate(idx):
            xa[n, : la[t]], xb[n, : lb[t]] = segs[pairs[t, 0]], segs[pairs[t, 1]]
        out[idx] = dtw_batch(distance(xa, xb), torch.as_tensor(la[idx]), torch.as_tensor(lb[idx])).numpy()
        s = e
    return out


def _err(dax: np.ndarray, dbx: np.ndarray, mask: Optional[np.ndarray] = None) -> tuple[float, int]:
    """Mean error over triplets: ``dax [nA, nX]``, ``dbx [nB, nX]``; ``mask [nA, nX]`` valid (A, X)."""
    c = dax[:, None, :] - dbx[None, :, :]  # [a, b, x]
    e = (c > 0) + 0.5 * (c == 0)
    m = np.broadcast_to((np.ones_like(dax, bool) if mask is None else mask)[:, None, :], e.shape)
    n = int(m.sum())
    return (float(e[m].sum() / n), n) if n else (float("nan"), 0)


def abx_cells(items: Sequence[Item], segs: Sequence[torch.Tensor], *, max_per_cell: int = 10,
              max_x_speakers: int = 5, max_contexts: Optional[int] = None, seed: int = 0,
              distance=angular_distances) -> dict:
    """ABX error cells of ``items`` with features ``segs[i] [n_i, D]`` (see module doc); for
    discrete codes ``segs[i] [n_i, k]`` pass ``distance=code_distances``.

    Returns ``{"within": [(context, speaker, c1, c2, err, n_triplets)], "across": [((context, x_speaker),
    ab_speaker, c1, c2, err, n_triplets)], "n_items", "n_pairs"}``; items with no frames are left out."""
    rng = np.random.default_rng(seed)
    groups: dict = defaultdict(lambda: defaultdict(list))  # context -> (phone, speaker) -> item ids
    for i, it in enumerate(items):
        if len(segs[i]):
            groups[(it.prev, it.next)][(it.phone, it.speaker)].append(i)
    ctxs = sorted(c for c, g in groups.items() if len({p for p, _ in g}) >= 2)
    if max_contexts is not None and len(ctxs) > max_contexts:
        ctxs = [ctxs[i] for i in sorted(rng.choice(len(ctxs), max_contexts, replace=False))]
    plan, pairs = [], set()
    for ctx in ctxs:
        cells = {k: sorted(rng.choice(v, max_per_cell, replace=False)) if len(v) > max_per_cell else v
                 for k, v in sorted(groups[ctx].items())}
        ids = sorted({i for v in cells.values() for i in v})
        pairs.update((p, q) for n, p in enumerate(ids) for q in ids[n + 1:])
        plan.append((ctx, cells, ids))
    pairs_arr = np.array(sorted(pairs), dtype=int).reshape(-1, 2)
    dist = dict(zip(map(tuple, pairs_arr), pair_distances(segs, pairs_arr, distance=distance)))
    within, across = [], []
    for ctx, cells, ids in plan:
        pos = {i: n for n, i in enumerate(ids)}
        M = np.zeros((len(ids), len(ids)))
        for (p, q) in ((p, q) for n, p in enumerate(ids) for q in ids[n + 1:]):
            M[pos[p], pos[q]] = M[pos[q], pos[p]] = dist[(p, q)]
        by_spk = defaultdict(dict)
        for (ph, spk), v in cells.items():
            by_spk[spk][ph] = [pos[i] for i in v]
        for s, phs in sorted(by_spk.items()):
            for c1, I1 in phs.items():
                for c2, I2 in phs.items():
                    if c1 != c2 and len(I1) >= 2:
                        e, n = _err(M[np.ix_(I1, I1)], M[np.ix_(I2, I1)], ~np.eye(len(I1), dtype=bool))
                        within.append((ctx, s, c1, c2, e, n))
            for c1, I1 in phs.items():
                others = [t for t in sorted(by_spk) if t != s and c1 in by_spk[t]]
                if len(others) > max_x_speakers:
                    others = [others[i] for i in sorted(rng.choice(len(others), max_x_speakers, replace=False))]
                for t in others:
                    X = by_spk[t][c1]
                    for c2, I2 in phs.items():
                        if c1 != c2:
                            e, n = _err(M[np.ix_(I1, X)], M[np.ix_(I2, X)])
                            across.append(((ctx, t), s, c1, c2, e, n))
    return {"within": within, "across": across, "n_items": sum(len(s) > 0 for s in segs), "n_pairs": len(pairs_arr)}


def abx_score(cells: list, speaker_weights: Optional[dict] = None) -> float:
    """ABX error of ``abx_cells`` rows: mean over contexts (across: over contexts and X speakers, as
    libri-light), then over (A/B) speakers weighted by ``speaker_weights``, then over ordered phone
    pairs. NaN if no cell has triplets."""
    by_sp = defaultdict(list)
    for _, spk, c1, c2, e, n in cells:
        if n:
            by_sp[(spk, c1, c2)].append(e)
    by_pair = defaultdict(lambda: [0.0, 0.0])
    for (spk, c1, c2), es in by_sp.items():
        w = 1.0 if speaker_weights is None else float(speaker_weights.get(spk, 0))
        acc = by_pair[(c1, c2)]
        acc[0] += w * float(np.mean(es))
        acc[1] += w
    vals = [a / b for a, b in by_pair.values() if b > 0]
    return float(np.mean(vals)) if vals else float("nan")


def bootstrap_abx(cells: list, n: int = 200, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `abx_score` over ``n`` resamplings of speakers (with replacement)."""
    spk = sorted({c[1] for c in cells})
    if not spk:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        counts = np.bincount(rng.integers(0, len(spk), len(spk)), minlength=len(spk))
        vals.append(abx_score(cells, dict(zip(spk, counts))))
    vals = [v for v in vals if not math.isnan(v)]
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))) if vals else (math.nan, math.nan)


def abx_error(items: Sequence[Item], segs: Sequence[torch.Tensor], **caps) -> dict:
    """``{"within", "across"}`` ABX errors (see module doc) with ``n_cells_*``, ``n_triplets_*``."""
    cells = abx_cells(items, segs, **caps)
    out = {"n_items": cells["n_items"], "n_pairs": cells["n_pairs"]}
    for mode in ("within", "across"):
        out[mode] = abx_score(cells[mode])
        out[f"n_cells_{mode}"] = sum(c[5] > 0 for c in cells[mode])
        out[f"n_triplets_{mode}"] = sum(c[5] for c in cells[mode])
    out["cells"] = cells
    return out
