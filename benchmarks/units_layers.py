"""Phone information per feature layer: PNMI / purities of k-means units and triphone ABX of the features.

    python -m speechtok.benchmarks.units_layers --manifest /work/shared/data/real/manifest.jsonl \\
        --manifest /work/shared/data/tts/manifest.jsonl --dev-split benchmarks/splits/dev_real.jsonl \\
        --extractor mfcc --extractor whisper:tiny.en --extractor whisper:base --layers all --k 100 \\
        --max-train 300 --max-dev 200 --out benchmarks/results/units_layers.md

Data: manifest rows with a ``phones`` alignment. Real speech (every source but the MBROLA voices):
dev = the rows of ``--dev-split`` (a manifest; rows without phones are counted and skipped) or,
without one, every ``--dev-every``-th speaker (speakers sorted by name); train = the other rows whose
speaker is not a dev speaker; ``--heldout-corpus SOURCE`` moves a whole real corpus (e.g. the one
LJSpeech speaker) to dev. ``--train-split`` (a manifest) replaces the manifests as the train pool.
Synthetic speech (speakers ``mbrola_*``, a non-commercial licence: evaluation only) is never trained
on; all of its rows (at most ``--max-synthetic``) are evaluated. Subsets: ``--max-train`` (in all),
``--max-dev`` (per real corpus), ``--max-synthetic`` utterances, taken round-robin over speakers after a
seeded shuffle.

Per extractor (``mfcc``, ``whisper:NAME`` with NAME a `whisper_model_dir` name or a directory) all
layers come from one pass (``extract_layers`` of a `LayeredExtractor`; MFCC has one "layer", shown
``-``). Per layer: faiss k-means (K=``--k``) on at most ``--kmeans-frames`` train frames drawn with
``--seed`` (raw features, no normalisation); on dev, per corpus, PNMI / phone purity / cluster purity
of the units over non-silence frames (`speechtok.benchmarks.phone_metrics`; +- 1.96 bootstrap SD over
utterances: a percentile interval would not hold the estimate, as the plug-in MI is biased upwards,
by about (phones - 1)(units - 1) / (2 frames) nats, more in a resample; so compare layers on one dev
set, not corpora of different sizes), and within / across speaker triphone ABX error of the features
themselves (angular distance, DTW; 95% percentile bootstrap over speakers, degenerate for one
speaker; capped per `phone_metrics.abx_cells`).
Features are kept in float16 between extraction and scoring.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .phone_metrics import (abx_cells, abx_score, bootstrap_abx, bootstrap_pnmi, frame_labels, item_frames,
                            pnmi_purity, read_phones, speech_mask, triphone_items)


def read_rows(path) -> list[dict]:
    """Manifest rows with ``audio``/``phones`` made absolute (relative to the manifest's folder)."""
    base = Path(path).resolve().parent
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            r["audio"] = str(base / r["audio"])
            if r.get("phones"):
                r["phones"] = str(base / r["phones"])
            rows.append(r)
    return rows


def corpus_of(r: dict) -> str:
    """``"mbrola"`` for the synthetic MBROLA voices, else the row's ``source`` (or ``"real"``)."""
    return "mbrola" if str(r.get("speaker", "")).startswith("mbrola") else str(r.get("source") or "real")


def round_robin(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """At most ``n`` rows, taken in turn from each speaker (rows shuffled with ``seed`` first)."""
    rng = np.random.default_rng(seed)
    by = defaultdict(list)
    for i in rng.permutation(len(rows)):
        by[rows[i].get("speaker", "?")].append(rows[i])
    out, queues = [], [by[k] for k in sorted(by)]
    while queues and (n is None or len(out) < n):
        queues = [q for q in queues if q]
        for q in queues:
            if q and (n is None or len(out) < n):
                out.append(q.pop())
    return out


def make_splits(a) -> dict:
    """``{"train": rows, "dev": rows, "synthetic": rows, "notes": [str]}`` (see module doc)."""
    pool = [r for m in a.manifest for r in read_rows(m)]
    notes = []
    synth = [r for r in pool if corpus_of(r) == "mbrola" and r.get("phones")]
    real = [r for r in pool if corpus_of(r) != "mbrola" and r.get("phones")]
    if a.dev_split:
        dev_all = [r for r in read_rows(a.dev_split) if corpus_of(r) != "mbrola"]
        dev = [r for r in dev_all if r.get("phones")]
        notes.append(f"dev split {a.dev_split}: {len(dev_all)} real rows, {len(dev_all) - len(dev)} without phones "
                     f"skipped")
    else:
        spk = sorted({r["speaker"] for r in real})
        held = set(spk[:: a.dev_every])
        dev = [r for r in real if r["speaker"] in held]
        notes.append(f"no dev split: every {a.dev_every}th real speaker held out ({len(held)} of {len(spk)})")
    for c in a.heldout_corpus or []:
        extra = [r for r in real if corpus_of(r) == c]
        dev += extra
        notes.append(f"corpus {c} held out whole: {len(extra)} rows to dev")
    dev_spk, dev_ids = {r["speaker"] for r in dev}, {r["id"] for r in dev}
    train_pool = [r for m in a.train_split for r in read_rows(m)] if a.train_split else real
    train = [r for r in train_pool if r.get("phones") and corpus_of(r) != "mbrola" and r["speaker"] not in dev_spk
             and r["id"] not in dev_ids]
    dev = [r for c in sorted({corpus_of(r) for r in dev})
           for r in round_robin([r for r in dev if corpus_of(r) == c], a.max_dev, a.seed)]
    return {"train": round_robin(train, a.max_train, a.seed), "dev": dev,
            "synthetic": round_robin(synth, a.max_synthetic, a.seed), "notes": notes}


def load_ext(spec: str, a):
    """``mfcc`` | ``whisper:NAME_OR_DIR`` -> (label, extractor) through the feature registry."""
    from speechtok.units.features import load_extractor

    kind, _, src = spec.partition(":")
    if kind == "whisper":
        from speechtok.benchmarks.asr import whisper_model_dir

        path = src if Path(src).is_dir() else whisper_model_dir(src or "base")
        return f"whisper {src or 'base'} pad={a.pad_to_window}", load_extractor(
            "whisper", path, layer=None, device=a.device, pad_to_window=bool(a.pad_to_window))
    return kind, load_extractor(kind, src or None, device=a.device)


def extract_all(ext, rows: list[dict], layers, batch_seconds: float) -> dict:
    """``{layer: {id: float16 [T, D]}}`` for ``rows``; ``layers`` None: the single ``extract`` (key -1)."""
    from speechtok.audio import load_audio

    sr = ext.sample_rate
    wavs = {r["id"]: load_audio(r["audio"], sample_rate=sr)[0].mean(0) for r in rows}
    order = sorted(wavs, key=lambda u: wavs[u].shape[0])
    out: dict = defaultdict(dict)
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j + 1 - i) * wavs[order[j]].shape[0] <= batch_seconds * sr:
            j += 1
        chunk = order[i:j]
        lens = torch.tensor([wavs[u].shape[0] for u in chunk])
        pad = torch.zeros(len(chunk), 1, int(lens.max()))
        for n, u in enumerate(chunk):
            pad[n, 0, : lens[n]] = wavs[u]
        got = ext.extract_layers(pad, lens, layers) if layers is not None else {-1: ext.extract(pad, lens)}
        for layer, f in got.items():
            for u, x in zip(chunk, f.unbatch()):
                out[layer][u] = x.detach().to("cpu", torch.float16)
        i = j
    return out


def score_layer(feats: dict, rows_by_corpus: dict, km, fr: float, off: float, a) -> dict:
    """Per corpus: PNMI/purities of ``km`` units on non-silence frames and ABX of the features."""
    res = {}
    for corpus, rows in rows_by_corpus.items():
        labs, units, items, segs = [], [], [], []
        t0 = time.perf_counter()
        for r in rows:
            x = feats[r["id"]].float()
            ph = read_phones(r["phones"])
            lab = frame_labels(ph, x.shape[0], fr, off)
            keep = speech_mask(lab)
            labs.append(lab[keep])
            units.append(km.predict(x).numpy()[keep])
            for it in triphone_items(ph, r["id"], r["speaker"]):
                items.append(it)
                segs.append(item_frames(x, it, fr, off))
        m = pnmi_purity(np.concatenate(labs), np.concatenate(units))
        m["pnmi_sd"] = bootstrap_pnmi(labs, units, n=a.bootstrap, seed=a.seed)
        t1 = time.perf_counter()
        cells = abx_cells(items, segs, max_per_cell=a.abx_max_per_cell, max_x_speakers=a.abx_max_x,
                          max_contexts=a.abx_max_contexts, seed=a.seed)
        for mode in ("within", "across"):
            m[f"abx_{mode}"] = abx_score(cells[mode])
            m[f"abx_{mode}_ci"] = bootstrap_abx(cells[mode], n=a.bootstrap, seed=a.seed)
            m[f"abx_{mode}_cells"] = sum(c[5] > 0 for c in cells[mode])
        m.update(frames=int(sum(len(x) for x in labs)), items=cells["n_items"], pairs=cells["n_pairs"],
                 pnmi_s=t1 - t0, abx_s=time.perf_counter() - t1)
        res[corpus] = m
    return res


def fmt_ci(v: float, ci, digits: int = 3) -> str:
    """``v [lo, hi]`` with ``digits`` decimals; ``n/a`` for NaN (nothing to score)."""
    return "n/a" if v != v else f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", action="append", required=True, help="manifest(s) with phones (repeatable)")
    ap.add_argument("--dev-split", default=None, help="manifest of the held-out real rows")
    ap.add_argument("--train-split", action="append", default=None, help="manifest(s): the train pool")
    ap.add_argument("--heldout-corpus", action="append", default=None,
                    help="a real corpus (manifest source, e.g. ljspeech) held out whole: dev only (repeatable)")
    ap.add_argument("--dev-every", type=int, default=5, help="without --dev-split: hold out every Nth speaker")
    ap.add_argument("--extractor", action="append", default=None, help="mfcc | whisper:NAME_OR_DIR (repeatable)")
    ap.add_argument("--layers", default="all", help="'all' or comma-separated layers of layered extractors")
    ap.add_argument("--pad-to-window", type=int, choices=(0, 1), default=1, help="Whisper: pad windows to 30 s")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--kmeans-frames", type=int, default=50000)
    ap.add_argument("--max-train", type=int, default=300)
    ap.add_argument("--max-dev", type=int, default=200)
    ap.add_argument("--max-synthetic", type=int, default=200)
    ap.add_argument("--abx-max-per-cell", type=int, default=10)
    ap.add_argument("--abx-max-x", type=int, default=5)
    ap.add_argument("--abx-max-contexts", type=int, default=None)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--batch-seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    a.extractor = a.extractor or ["mfcc"]
    return a


def main(argv=None) -> int:
    from speechtok.units.features import LayeredExtractor
    from speechtok.units.kmeans import KMeansConfig, train_kmeans

    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cmd = "python -m speechtok.benchmarks.units_layers " + " ".join(shlex.quote(x) for x in
                                                                      (sys.argv[1:] if argv is None else argv))
    sp = make_splits(a)
    eval_sets: dict = defaultdict(list)
    for r in sp["dev"] + sp["synthetic"]:
        eval_sets[corpus_of(r)].append(r)
    if not sp["train"] or not eval_sets:
        raise SystemExit(f"need train and dev rows with phones: {len(sp['train'])} train, "
                         f"{sum(map(len, eval_sets.values()))} dev")

    def desc(rows):
        return (f"{len(rows)} utterances, {sum(r.get('duration', 0) for r in rows) / 60:.1f} min, "
                f"{len({r['speaker'] for r in rows})} speakers")

    lines = ["# Phone information per feature layer\n", f"Command: `{cmd}`\n", *[f"- {n}" for n in sp["notes"]],
             f"- train (k-means; real speech): {desc(sp['train'])}",
             *[f"- eval {c}: {desc(rs)}" for c, rs in sorted(eval_sets.items())],
             f"- K={a.k} k-means on at most {a.kmeans_frames} train frames (seed {a.seed}); PNMI/purities on "
             "non-silence dev frames; ABX on the features (triphones, angular DTW), caps per cell "
             f"{a.abx_max_per_cell}, X speakers {a.abx_max_x}, contexts {a.abx_max_contexts or 'all'}; "
             f"bootstrap {a.bootstrap} draws (PNMI: SD over utterances; ABX: 95% percentile over speakers)\n"]
    results, timing = [], []
    for spec in a.extractor:
        t0 = time.perf_counter()
        label, ext = load_ext(spec, a)
        layered = isinstance(ext, LayeredExtractor) and hasattr(ext, "num_layers")
        layers = None
        if layered:
            layers = list(range(ext.num_layers + 1)) if a.layers == "all" else [int(x) for x in a.layers.split(",")]
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = sp["train"] + [r for rs in eval_sets.values() for r in rs]
        feats = extract_all(ext, rows, layers, a.batch_seconds)
        t_ext = time.perf_counter() - t0
        audio_min = sum(r.get("duration", 0) for r in rows) / 60
        timing.append(f"| {label} | {len(rows)} | {audio_min:.1f} | {t_load:.1f} | {t_ext:.1f} |")
        print(timing[-1], flush=True)
        fr, off = ext.spec.frame_rate, float(ext.frame_offset_s)
        for layer, fl in sorted(feats.items()):
            t0 = time.perf_counter()
            train = np.concatenate([fl[r["id"]].float().numpy() for r in sp["train"]])
            if len(train) > a.kmeans_frames:
                train = train[np.sort(np.random.default_rng(a.seed).choice(len(train), a.kmeans_frames, replace=False))]
            km = train_kmeans(train, KMeansConfig(n_clusters=a.k, seed=a.seed))
            t_km = time.perf_counter() - t0
            res = score_layer(fl, eval_sets, km, fr, off, a)
            for corpus, m in res.items():
                results.append((corpus, label, "-" if layer < 0 else str(layer), ext.spec.dim, fr, m, t_km, len(train)))
                print(corpus, label, layer, {k: v for k, v in m.items() if not k.endswith(("_ci", "_sd"))}, flush=True)
        del feats, ext
    for corpus in sorted(eval_sets):
        lines += [f"\n## {corpus} ({desc(eval_sets[corpus])})\n",
                  "| features | layer | dim | Hz | PNMI +- 1.96 SD | phone purity | cluster purity | units used | "
                  "ABX within % [95% CI] | ABX across % [95% CI] | ABX cells w/a | frames | items |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c, label, layer, dim, fr, m, _, _ in results:
            if c == corpus:
                pct = {k: (100 * m[f"abx_{k}"], tuple(100 * v for v in m[f"abx_{k}_ci"])) for k in ("within", "across")}
                lines.append(f"| {label} | {layer} | {dim} | {fr:g} | {m['pnmi']:.3f} +- {1.96 * m['pnmi_sd']:.3f} | "
                             f"{m['phone_purity']:.3f} | {m['cluster_purity']:.3f} | {m['units_used']}/{a.k} | "
                             f"{fmt_ci(*pct['within'], 1)} | {fmt_ci(*pct['across'], 1)} | "
                             f"{m['abx_within_cells']}/{m['abx_across_cells']} | {m['frames']} | {m['items']} |")
    lines += ["\n## Wall times (s)\n", "| features | utterances | audio min | load | extract (all layers) |",
              "|---|---|---|---|---|", *timing, "",
              "| features | layer | corpus | k-means frames | k-means s | PNMI s | ABX s | ABX pairs |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {label} | {layer} | {c} | {n} | {t_km:.1f} | {m['pnmi_s']:.1f} | {m['abx_s']:.1f} | {m['pairs']} |"
              for c, label, layer, _, _, m, t_km, n in results]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
