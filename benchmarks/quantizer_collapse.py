"""Codebook collapse on real speech features: every countermeasure off, alone, and all on.

    OMP_NUM_THREADS=2 python -m speechtok.benchmarks.quantizer_collapse \\
        --data /work/shared/data/real/manifest.jsonl --features logmel mfcc --sizes 1024 4096

Features are computed from the manifests' audio (resampled to 16 kHz; 25 ms windows, 10 ms
hop): 80-band log-mel and 20 MFCCs, standardised per dimension with training statistics.
Utterances are shuffled (seeded) and every 4th goes to a held-out dev set (large, so that a
code's absence from it means something even with 4096 codes).

Each configuration trains one single-codebook ``VectorQuantizer`` for the same number of steps
on batches of random training frames, with the same seed; the factorized lookup (trained by
gradient) learns with Adam on ``|x - q(x)|^2 + penalty``. Measured on the dev frames: percent of
codes used, usage perplexity (``2**entropy``), codes below the dead threshold at the end of
training, and relative quantization error ``|x - q(x)|^2 / |x - mean|^2``.
The table goes to stdout and to ``benchmarks/results/quantizer_collapse.md`` (the exact command
on top).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

SAMPLE_RATE = 16000
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quantizer_collapse.md"


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: which lookup and which countermeasures are on."""

    name: str
    lookup: str  # "euclidean" (EMA) or "factorized" (l2-normalised, 8-d, gradient)
    kmeans: bool
    dead_code: bool


VARIANTS = (
    Variant("none (EMA, random init)", "euclidean", False, False),
    Variant("k-means init only", "euclidean", True, False),
    Variant("dead-code replacement only", "euclidean", False, True),
    Variant("l2-normalised 8-d lookup only", "factorized", False, False),
    Variant("k-means + dead-code (EMA, Mimi-like)", "euclidean", True, True),
    Variant("all three", "factorized", True, True),
)


@dataclass(frozen=True)
class FeatureSet:
    """Standardised frames: ``train`` ``[N, D]``, ``dev`` ``[M, D]``; ``utterances`` read."""

    name: str
    train: torch.Tensor
    dev: torch.Tensor
    utterances: int


def _read_manifests(paths: Sequence[str]) -> list[Path]:
    files = []
    for manifest in paths:
        root = Path(manifest).resolve().parent
        with open(manifest) as f:
            for line in f:
                if line.strip():
                    files.append(root / json.loads(line)["audio"])
    return files


def load_features(manifests: Sequence[str], kinds: Sequence[str], max_frames: int, seed: int, dev_every: int = 4) -> list[FeatureSet]:
    """Log-mel / MFCC frames of the manifests' audio; every ``dev_every``-th utterance goes to dev."""
    import torchaudio

    from speechtok.audio import load_audio

    files = _read_manifests(manifests)
    random.Random(seed).shuffle(files)
    mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160, n_mels=80)
    dct = torchaudio.functional.create_dct(20, 80, norm="ortho")  # [80, 20]
    frames: dict[str, list[list[torch.Tensor]]] = {k: [[], []] for k in kinds}
    total, used = 0, 0
    with torch.no_grad():
        for i, path in enumerate(files):
            if total >= max_frames:
                break
            wav, _ = load_audio(path, sample_rate=SAMPLE_RATE)
            logmel = mel(wav[0]).clamp(min=1e-5).log().t()  # [T, 80]
            split = 1 if i % dev_every == 0 else 0
            for kind in kinds:
                frames[kind][split].append(logmel if kind == "logmel" else logmel @ dct)
            total += logmel.shape[0] * (1 - split)
            used += 1
    out = []
    for kind in kinds:
        train, dev = torch.cat(frames[kind][0]), torch.cat(frames[kind][1])
        mean, std = train.mean(0), train.std(0).clamp(min=1e-5)
        out.append(FeatureSet(kind, (train - mean) / std, (dev - mean) / std, used))
    return out


@dataclass(frozen=True)
class Settings:
    """What every variant shares (the policies' knobs; ``enabled`` comes from the variant)."""

    steps: int = 500
    batch: int = 1024
    seed: int = 0
    threshold: float = 0.1
    check_every: int = 10
    dead_decay: float = 0.95
    kmeans_per_code: int = 8
    lr: float = 3e-3


def run_variant(feats: FeatureSet, codebook_size: int, variant: Variant, settings: Settings = Settings()) -> dict:
    """Train one quantizer for ``settings.steps`` and measure it on the dev frames."""
    from speechtok.codec.quantization import DeadCodePolicy, KMeansInit, VectorQuantizer

    s = settings
    torch.manual_seed(s.seed)
    dim = feats.train.shape[1]
    # Pool enough frames for k-means (``kmeans_per_code`` per code) over the first batches.
    pool = max(1, math.ceil(s.kmeans_per_code * codebook_size / s.batch))
    vq = VectorQuantizer(
        dim=dim, codebook_size=codebook_size, lookup=variant.lookup,
        kmeans_init=KMeansInit(enabled=variant.kmeans, iters=10, batches=pool, max_samples=pool * s.batch),
        dead_code=DeadCodePolicy(enabled=variant.dead_code, threshold=s.threshold, check_every=s.check_every, decay=s.dead_decay),
    )
    steps, batch, seed = s.steps, s.batch, s.seed
    params = list(vq.parameters())
    opt = torch.optim.Adam(params, lr=s.lr) if params else None
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    vq.train()
    for _ in range(steps):
        idx = torch.randint(0, feats.train.shape[0], (batch,), generator=g)
        x = feats.train[idx].t()[None]  # [1, D, batch]
        out = vq(x)
        if opt is not None:
            loss = (out.x - x).pow(2).mean() + out.penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    train_s = time.perf_counter() - t0
    dead = out.metrics["q0/dead"].item()
    vq.eval()
    counts = torch.zeros(codebook_size)
    err = 0.0
    with torch.no_grad():
        for start in range(0, feats.dev.shape[0], 8192):
            x = feats.dev[start : start + 8192].t()[None]
            o = vq(x)
            counts += torch.bincount(o.codes.reshape(-1), minlength=codebook_size).float()
            err += (o.x - x).pow(2).sum().item()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log2()).sum().item()
    var = (feats.dev - feats.dev.mean(0)).pow(2).sum().item()
    return {
        "features": feats.name, "dim": dim, "K": codebook_size, "variant": variant.name,
        "used_pct": 100.0 * (counts > 0).float().mean().item(), "perplexity": 2.0 ** entropy,
        "dead": int(dead), "rel_err": err / var, "train_s": train_s,
    }


def to_markdown(rows: list[dict], command: str, info: str) -> str:
    lines = [
        "# Quantizer collapse on real speech features", "",
        "```", command, "```", "", info, "",
        "| features | K | countermeasures | codes used (dev) | perplexity (dev) | perplexity / K | dead at end | rel. quantization error | train s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['features']} ({r['dim']}-d) | {r['K']} | {r['variant']} | {r['used_pct']:.1f}% | {r['perplexity']:.0f} | "
            f"{r['perplexity'] / r['K']:.2f} | {r['dead']} | {r['rel_err']:.3f} | {r['train_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="manifest.jsonl files (audio paths relative to each)")
    p.add_argument("--features", nargs="+", default=["logmel", "mfcc"], choices=["logmel", "mfcc"])
    p.add_argument("--sizes", nargs="+", type=int, default=[1024, 4096])
    p.add_argument("--variants", nargs="+", type=int, default=None, help=f"indices into the {len(VARIANTS)} variants (default all)")
    p.add_argument("--steps", type=int, default=Settings.steps)
    p.add_argument("--batch", type=int, default=Settings.batch, help="frames per training step")
    p.add_argument("--threshold", type=float, default=Settings.threshold, help="dead below this fraction of the uniform share")
    p.add_argument("--check-every", type=int, default=Settings.check_every, help="steps between dead-code checks")
    p.add_argument("--dead-decay", type=float, default=Settings.dead_decay, help="decay of the usage EMA the dead-code rule reads")
    p.add_argument("--kmeans-per-code", type=int, default=Settings.kmeans_per_code, help="frames pooled for k-means per code")
    p.add_argument("--lr", type=float, default=Settings.lr, help="Adam learning rate (factorized lookup)")
    p.add_argument("--max-frames", type=int, default=300000, help="training frames to extract")
    p.add_argument("--dev-every", type=int, default=4, help="every N-th utterance is held out")
    p.add_argument("--seed", type=int, default=Settings.seed)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown file to write ('' for none)")
    args = p.parse_args(argv)

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    feature_sets = load_features(args.data, args.features, args.max_frames, args.seed, args.dev_every)
    load_s = time.perf_counter() - t0
    variants = VARIANTS if args.variants is None else [VARIANTS[i] for i in args.variants]
    settings = Settings(steps=args.steps, batch=args.batch, seed=args.seed, threshold=args.threshold, check_every=args.check_every,
                        dead_decay=args.dead_decay, kmeans_per_code=args.kmeans_per_code, lr=args.lr)
    rows = []
    for feats in feature_sets:
        for size in args.sizes:
            for variant in variants:
                row = run_variant(feats, size, variant, settings)
                rows.append(row)
                print(json.dumps(row), flush=True)
    fs = feature_sets[0]
    command = f"OMP_NUM_THREADS={threads} python -m speechtok.benchmarks.quantizer_collapse " + " ".join(argv)
    info = (
        f"Data: {fs.utterances} utterances of {', '.join(args.data)} -> {fs.train.shape[0]} training / "
        f"{fs.dev.shape[0]} dev frames (100 Hz; dev = every {args.dev_every}th utterance). {args.steps} steps of {args.batch} "
        f"random frames, seed {args.seed}, {threads} threads; feature extraction {load_s:.0f} s, total "
        f"{time.perf_counter() - t0:.0f} s. Dead-code policy: threshold {args.threshold} x uniform share, checked every "
        f"{args.check_every} steps (usage EMA decay {args.dead_decay}); EMA codebooks: decay 0.99; "
        f"k-means: 10 iterations on the first {args.kmeans_per_code} x K frames; factorized lookup: 8-d, "
        f"l2-normalised, Adam {args.lr:g}. Codes used and perplexity are counted on the dev frames."
    )
    table = to_markdown(rows, command, info)
    print(table)
    if args.out:
        from speechtok.atomic import atomic_write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
