"""Unit quality on phone-aligned TTS speech: PNMI, purities, syllable boundaries, rates.

    python -m speechtok.benchmarks.units_eval --manifest /work/shared/data/tts/manifest.jsonl \
        --whisper-model $(python -c 'from speechtok.benchmarks.asr import whisper_model_dir as d; print(d("base"))') --k 100 \
        --out benchmarks/results/units_eval.md

Data: the MBROLA voices (exact phone alignments, manifest ``phones`` TSV ``start end phone``),
split by utterance index into train (k-means, BPE) and dev (all numbers). Frame labels: the phone
under each feature frame's centre (`speechtok.benchmarks.phone_metrics`; silence kept as a class).
PNMI = I(phone; unit) / H(phone) (HuBERT paper); phone purity = E_unit max_phone p(phone | unit);
cluster purity = E_phone max_unit p(unit | phone).
Syllables: phones grouped around vowel nuclei (one intervocalic consonant goes to the onset, the
rest to the coda; silences split); boundary precision/recall/F1/R-value at 50 ms tolerance with
one-to-one matching, utterance edges excluded.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .phone_metrics import SILENCE, frame_labels, pnmi_purity, read_phones  # noqa: F401 (re-exported)

VOWELS = {"@", "I", "{", "V", "i", "E", "@U", "EI", "AI", "A", "U", "u", "Q", "eI", "e", "aU", "aI", "i:", "O:",
          "A:", "u:", "O2", "OI", "3:", "e@", "I@", "O", "r=", "l=", "3", "U@", "o", "a", "y", "9"}
SIL = SILENCE


def syllable_boundaries(phones) -> list[float]:
    """Interior syllable boundaries (seconds) from a phone alignment."""
    bounds = []
    segs: list[list] = [[]]
    for a, b, p in phones:  # split at silences
        if p in SIL:
            if segs[-1]:
                segs.append([])
            continue
        segs[-1].append((a, b, p))
    for seg in segs:
        if not seg:
            continue
        nuclei = [i for i, (_, _, p) in enumerate(seg) if p in VOWELS]
        if not nuclei:
            continue
        bounds.append(seg[0][0])
        for n0, n1 in zip(nuclei[:-1], nuclei[1:]):
            n_cons = n1 - n0 - 1
            cut = n1 - 1 if n_cons >= 1 else n1  # one consonant onset
            bounds.append(seg[cut][0])
        bounds.append(seg[-1][1])
    bounds = sorted(set(round(b, 4) for b in bounds))
    return bounds


def match_boundaries(ref: list[float], hyp: list[float], tol: float = 0.05) -> int:
    """Greedy one-to-one matches of hypothesis to reference boundaries within ``tol`` seconds."""
    used, hits = set(), 0
    for h in hyp:
        best, bi = tol + 1e-9, None
        for i, r in enumerate(ref):
            if i not in used and abs(r - h) <= best:
                best, bi = abs(r - h), i
        if bi is not None:
            used.add(bi)
            hits += 1
    return hits


def boundary_scores(n_ref: int, n_hyp: int, hits: int) -> dict:
    p = hits / max(n_hyp, 1)
    r = hits / max(n_ref, 1)
    f1 = 2 * p * r / max(p + r, 1e-9)
    os_ = r / max(p, 1e-9) - 1
    r1 = math.sqrt((1 - r) ** 2 + os_ ** 2)
    r2 = (-os_ + r - 1) / math.sqrt(2)
    return {"precision": p, "recall": r, "f1": f1, "r_value": 1 - (abs(r1) + abs(r2)) / 2}


def main(argv=None):
    from speechtok.audio import load_audio
    from speechtok.bpe import UnitBPE
    from speechtok.codes import Codes
    from speechtok.dedup import dedup
    from speechtok.units.features import load_extractor
    from speechtok.units.kmeans import KMeansConfig, train_kmeans
    from speechtok.units.segment import SegmenterConfig, pool_segments, segment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--whisper-model", default=None)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--syllable-k", type=int, default=200)
    ap.add_argument("--bpe-vocab", type=int, default=1000)
    ap.add_argument("--max-utts", type=int, default=160)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    root = Path(a.manifest).parent
    recs = [json.loads(l) for l in open(a.manifest) if '"phones"' in l]
    recs = [r for r in recs if r.get("phones")][: a.max_utts]
    split = {r["id"]: ("dev" if i % 4 == 0 else "train") for i, r in enumerate(recs)}
    wavs = {r["id"]: load_audio(root / r["audio"], sample_rate=16000)[0][0] for r in recs}
    phones = {r["id"]: read_phones(root / r["phones"]) for r in recs}
    kinds = [("mfcc", None)] + ([("whisper", a.whisper_model)] if a.whisper_model else [])
    lines = [f"# Units on MBROLA TTS phone alignments\n\nCommand: `python -m speechtok.benchmarks.units_eval "
             f"--manifest {a.manifest} {'--whisper-model ' + a.whisper_model if a.whisper_model else ''} --k {a.k} "
             f"--syllable-k {a.syllable_k} --bpe-vocab {a.bpe_vocab} --max-utts {a.max_utts}`\n",
             f"{len(recs)} MBROLA utterances ({sum(v == 'dev' for v in split.values())} dev, the rest train for "
             f"k-means/BPE); all numbers on dev. Frame units K={a.k}; syllable units K={a.syllable_k} at 5 Hz.\n"]
    table = ["| features | frame rate | PNMI | phone purity | cluster purity | units used | extract s |",
             "|---|---|---|---|---|---|---|"]
    seg_table = ["| features | segmenter | precision | recall | F1 | R-value | segments/s |", "|---|---|---|---|---|---|---|"]
    rate_table = ["| features | stream | tokens/s | nominal bit/s | entropy bit/s |", "|---|---|---|---|---|"]
    for kind, ckpt in kinds:
        ext = load_extractor(kind, ckpt)
        t0 = time.perf_counter()
        feats = {}
        ids = list(wavs)
        for i in range(0, len(ids), 8):
            chunk = ids[i: i + 8]
            lens = torch.tensor([wavs[u].shape[0] for u in chunk])
            pad = torch.zeros(len(chunk), 1, int(lens.max()))
            for j, u in enumerate(chunk):
                pad[j, 0, : lens[j]] = wavs[u]
            f = ext.extract(pad, lens)
            for u, x in zip(chunk, f.unbatch()):
                feats[u] = x.float()
        ext_s = time.perf_counter() - t0
        fr = ext.spec.frame_rate
        offset = ext.frame_offset_s  # centre of frame 0
        train = np.concatenate([feats[u].numpy() for u in ids if split[u] == "train"])
        km = train_kmeans(train, KMeansConfig(n_clusters=a.k, nredo=3), spec=ext.spec)
        dev = [u for u in ids if split[u] == "dev"]
        units = {u: km.predict(feats[u]) for u in ids}
        lab = np.concatenate([frame_labels(phones[u], len(units[u]), fr, offset) for u in dev])
        pred = np.concatenate([units[u].numpy() for u in dev])
        m = pnmi_purity(lab, pred)
        table.append(f"| {kind} ({ext.spec.dim}-d) | {fr:g} Hz | {m['pnmi']:.3f} | {m['phone_purity']:.3f} | "
                     f"{m['cluster_purity']:.3f} | {m['units_used']}/{a.k} | {ext_s:.0f} |")
        # syllable boundaries
        pooled_train = {}
        for method in ("mincut", "greedy"):
            cfg = SegmenterConfig(method, 5.0)
            n_ref = n_hyp = hits = 0
            secs = 0.0
            for u in dev:
                b = segment(feats[u], fr, cfg)
                hyp = [float(x) / fr for x in b[1:-1]]
                ref = [x for x in syllable_boundaries(phones[u])]
                dur = len(feats[u]) / fr
                ref = [x for x in ref if 0.02 < x < dur - 0.02]
                n_ref, n_hyp, hits = n_ref + len(ref), n_hyp + len(hyp), hits + match_boundaries(ref, hyp)
                secs += dur
            s = boundary_scores(n_ref, n_hyp, hits)
            seg_table.append(f"| {kind} | {method} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
                             f"{s['r_value']:.3f} | {(n_hyp + len(dev)) / secs:.2f} |")
            pooled_train[method] = cfg
        # rates: frame units -> dedup -> BPE; syllable units (mincut)
        def to_codes(us):
            return Codes.from_tensor(torch.nn.utils.rnn.pad_sequence([units[u] for u in us], batch_first=True,
                                                                     padding_value=0)[:, None],
                                     torch.tensor([len(units[u]) for u in us]), frame_rate=fr,
                                     codebook_sizes=(a.k,), sample_rate=16000, model_id=f"{kind}-units@eval")
        tr_codes, dev_codes = to_codes([u for u in ids if split[u] == "train"]), to_codes(dev)
        bpe = UnitBPE.train(dedup(tr_codes), vocab_size=a.bpe_vocab)
        for name, c in (("frame units", dev_codes), ("dedup", dedup(dev_codes)),
                        (f"dedup + BPE ({bpe.vocab_size})", bpe.encode(dedup(dev_codes)))):
            rate_table.append(f"| {kind} | {name} | {c.token_rate():.1f} | {c.bitrate():.0f} | {c.entropy_bitrate():.0f} |")
        cfg = SegmenterConfig("mincut", 5.0)
        ptrain = torch.cat([pool_segments(feats[u], segment(feats[u], fr, cfg)) for u in ids if split[u] == "train"])
        skm = train_kmeans(ptrain.numpy(), KMeansConfig(n_clusters=min(a.syllable_k, len(ptrain) // 4)), spec=ext.spec)
        syl, durs = [], []
        for u in dev:
            b = segment(feats[u], fr, cfg)
            syl.append(skm.predict(pool_segments(feats[u], b)))
            durs.append(b[1:] - b[:-1])
        sc = Codes.from_tensor(torch.nn.utils.rnn.pad_sequence(syl, batch_first=True)[:, None],
                               torch.tensor([len(s) for s in syl]), frame_rate=fr,
                               codebook_sizes=(skm.n_clusters,), sample_rate=16000, model_id="syl@eval",
                               durations=torch.nn.utils.rnn.pad_sequence(durs, batch_first=True))
        rate_table.append(f"| {kind} | syllable units (mincut 5 Hz, K={skm.n_clusters}) | {sc.token_rate():.1f} | "
                          f"{sc.bitrate():.0f} | {sc.entropy_bitrate():.0f} |")
        print(table[-1], seg_table[-2:], rate_table[-4:], sep="\n", flush=True)
    text = "\n".join(lines + ["## Phone information of frame units\n"] + table
                     + ["\n## Syllable boundaries (50 ms tolerance, 5 Hz target)\n"] + seg_table
                     + ["\n## Token rate and bitrate on dev\n"] + rate_table) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
