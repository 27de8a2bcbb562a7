"""Unit tokenizers compared on held-out real speech: phone information, ABX of the units, bitrate.

    python -m speechtok.benchmarks.units_compare --dev benchmarks/splits/dev_real.jsonl \\
        --tokenizer units-mfcc500-16k --tokenizer units-whisper-tiny-l3-km500 \\
        --out benchmarks/results/units_whisper/compare.md

    # choosing K: tokenizers built in memory from one feature store, one per K
    python -m speechtok.benchmarks.units_compare --dev benchmarks/splits/dev_real.jsonl \\
        --store FEATURES_DIR --checkpoint whisper:tiny.en --k 50,100,200,500,1000

Every candidate is a unit tokenizer (a built-in name, a directory, or k-means over ``--store`` for each
``--k``: faiss, 256 x K rows, seed 0). Its *frame* units (no dedup, no BPE) of each dev utterance are
scored against the forced phone alignments (`speechtok.benchmarks.phone_metrics`; silence and
unaligned frames left out): PNMI (plug-in, and Miller-Madow corrected: the plug-in estimate grows
with K by about ``(phones - 1)(units - 1) / (2 N)`` nats on ``N`` frames, so only the corrected value
compares different K), phone and cluster purity, and triphone ABX within / across speaker of the
units themselves (one-hot frames: angular distance 0 between equal units, 0.5 otherwise). Rates on
all dev utterances: frame units/s, tokens/s after dedup, bit/s after dedup (nominal ``log2 K`` per
token, and the unigram entropy of the deduped stream; durations not counted, as is usual for
deduped units, and reported beside as the entropy of the run lengths, bit/s).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from .phone_metrics import abx_error, frame_labels, pnmi_purity, read_phones, speech_mask, triphone_items
from .units_layers import read_rows


def miller_madow_pnmi(phones: np.ndarray, units: np.ndarray) -> float:
    """PNMI with the Miller-Madow bias correction of both entropies: ``H += (bins - 1) / (2 N)``."""
    n = len(phones)
    if n == 0:
        return float("nan")

    def h(x):
        c = np.unique(x, return_counts=True)[1] / n
        return float(-(c * np.log(c)).sum()) + (len(c) - 1) / (2 * n)

    joint = np.char.add(np.char.add(phones.astype(str), "|"), units.astype(str))
    hp, hu, hj = h(phones), h(units), h(joint)
    return (hp + hu - hj) / hp if hp > 0 else float("nan")


def entropy_bits(counts: Counter) -> float:
    tot = sum(counts.values())
    return -sum(c / tot * math.log2(c / tot) for c in counts.values() if c) if tot else 0.0


def frame_units(tok, rows, max_seconds: float) -> list:
    """Frame units ``[T]`` (int64 numpy) of each row's audio (None for rows over ``max_seconds``)."""
    from speechtok.audio import load_audio

    out = []
    for r in rows:
        if r.get("duration", 0) > max_seconds:
            out.append(None)
            continue
        wav, _ = load_audio(r["audio"], sample_rate=int(tok.sample_rate))  # [1, S]
        with torch.inference_mode():
            codes = tok._units(wav[None], torch.tensor([wav.shape[-1]]))
        out.append(codes.codes[0, 0, : int(codes.lengths[0])].cpu().numpy())
    return out


def score(tok, rows, units, frame_rate: float, offset: float, k: int) -> dict:
    """Metrics of one tokenizer's dev units, per corpus (``source``) and over all rows."""
    res = {}
    by_src = defaultdict(list)
    for r, u in zip(rows, units):
        if u is not None:
            by_src[r["source"]].append((r, u))
    for src, pairs in sorted(by_src.items()):
        secs = sum(len(u) for _, u in pairs) / frame_rate
        runs, lens = Counter(), Counter()
        n_tok = 0
        for _, u in pairs:
            if len(u) == 0:
                continue
            change = np.flatnonzero(np.diff(u)) + 1
            starts = np.concatenate([[0], change])
            ends = np.concatenate([change, [len(u)]])
            runs.update(u[starts].tolist())
            lens.update((ends - starts).tolist())
            n_tok += len(starts)
        rate = n_tok / secs if secs else float("nan")
        out = {"items": len(pairs), "seconds": secs, "frame_rate": frame_rate, "dedup_tokens_s": rate,
               "dedup_nominal_bps": rate * math.log2(k), "dedup_entropy_bps": rate * entropy_bits(runs),
               "duration_entropy_bps": rate * entropy_bits(lens)}
        aligned = [(r, u) for r, u in pairs if r.get("phones")]
        if aligned:
            labs, unis, items, segs = [], [], [], []
            for r, u in aligned:
                ph = read_phones(r["phones"])
                lab = frame_labels(ph, len(u), frame_rate, offset)
                m = speech_mask(lab)
                labs.append(lab[m])
                unis.append(u[m])
                onehot = torch.nn.functional.one_hot(torch.as_tensor(u), k).float()
                for it in triphone_items(ph, r["id"], r["speaker"]):
                    a = max(0, int(math.ceil((it.onset_s - offset) * frame_rate)))
                    b = min(len(u), int(math.ceil((it.offset_s - offset) * frame_rate)))
                    if b > a:
                        items.append(it)
                        segs.append(onehot[a:b])
            lab, uni = np.concatenate(labs), np.concatenate(unis)
            out.update(pnmi_purity(lab, uni))
            out["pnmi_mm"] = miller_madow_pnmi(lab, uni)
            out["frames"] = int(len(lab))
            abx = abx_error(items, segs, seed=0)
            out["abx_within"], out["abx_across"] = abx["within"], abx["across"]
        res[src] = out
    return res


def candidates(a):
    """``(label, tokenizer)`` pairs from ``--tokenizer`` and ``--store``/``--k``."""
    import speechtok

    for t in a.tokenizer:
        tok = speechtok.load(t)
        yield t, tok
    if a.store:
        from speechtok.units.api import extractor_for_store, train_unit_tokenizer
        from speechtok.units.featstore import FeatureStore

        store = FeatureStore(a.store)
        ext = extractor_for_store(store, a.checkpoint)
        for k in [int(x) for x in a.k.split(",")]:
            t0 = time.perf_counter()
            tok = train_unit_tokenizer(store, ext, k, seed=0)
            print(f"k-means K={k}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            yield f"{store.spec.kind} layer {store.spec.layer} K={k}", tok


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dev", required=True, help="manifest of held-out utterances (phones where aligned)")
    p.add_argument("--tokenizer", action="append", default=[], help="built-in name or directory (repeatable)")
    p.add_argument("--store", help="feature store of training speech: k-means per --k")
    p.add_argument("--checkpoint", help="the store's extractor weights (e.g. whisper:tiny.en)")
    p.add_argument("--k", default="100,500")
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = read_rows(a.dev)
    cmd = "python -m speechtok.benchmarks.units_compare " + " ".join(shlex.quote(x) for x in
                                                                       (argv if argv is not None else sys.argv[1:]))
    table = []
    for label, tok in candidates(a):
        t0 = time.perf_counter()
        units = frame_units(tok, rows, a.max_seconds)
        t_enc = time.perf_counter() - t0
        ext = tok.extractor
        res = score(tok, rows, units, float(tok.frame_rate), float(ext.frame_offset_s), int(tok.units_codebook_sizes[0]))
        audio = sum(v["seconds"] for v in res.values())
        table.append((label, getattr(tok, "model_id", label), int(tok.units_codebook_sizes[0]), res, t_enc, audio))
        print(label, json.dumps(res), file=sys.stderr)
    lines = ["# Unit tokenizers on held-out real speech", "", f"Command: `{cmd}`", "",
             f"Dev: `{a.dev}` ({len(rows)} utterances). Frame units scored against forced phone alignments "
             "(silence excluded); ABX of the one-hot units (triphones, DTW); rates after dedup. "
             "PNMI-MM: Miller-Madow corrected (compares K).", ""]
    srcs = sorted({s for t in table for s in t[3]})
    for src in srcs:
        lines += [f"## {src}", "", "| tokenizer | K | Hz | PNMI | PNMI-MM | phone purity | cluster purity | used | "
                  "ABX within % | ABX across % | dedup tok/s | dedup bit/s (nominal) | dedup bit/s (entropy) | "
                  "+ durations bit/s |", "|" + "---|" * 14]
        for label, mid, k, res, _, _ in table:
            r = res.get(src)
            if r is None:
                continue

            def g(key, f="{:.3f}", scale=1.0):
                v = r.get(key)
                return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v * scale)

            lines.append(f"| {label} | {k} | {r['frame_rate']:g} | {g('pnmi')} | {g('pnmi_mm')} | "
                         f"{g('phone_purity')} | {g('cluster_purity')} | {g('units_used', '{:.0f}')} | "
                         f"{g('abx_within', '{:.1f}', 100)} | {g('abx_across', '{:.1f}', 100)} | "
                         f"{g('dedup_tokens_s', '{:.1f}')} | {g('dedup_nominal_bps', '{:.0f}')} | "
                         f"{g('dedup_entropy_bps', '{:.0f}')} | {g('duration_entropy_bps', '{:.0f}')} |")
        lines.append("")
    lines += ["## Encode time", "", "| tokenizer | model id | audio s | encode s (this machine, CPU) |",
              "|---|---|---|---|"]
    lines += [f"| {t[0]} | `{t[1]}` | {t[5]:.0f} | {t[4]:.1f} |" for t in table]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
