"""k-means benchmark: faiss path vs fairseq's sklearn MiniBatchKMeans recipe.

    python -m speechtok.benchmarks.units_kmeans --rows 1000000 --dim 768 --k 500 \
        --backends faiss --out benchmarks/results/units_kmeans.md

Each (backend, rows) run is a fresh subprocess so peak RSS (``ru_maxrss``) is its own. Data:
a seeded synthetic Gaussian mixture (``--true-k`` centres in ``--dim`` dimensions with unequal
spread and cluster sizes), made in the subprocess (its float32 size is reported beside RSS).
Inertia is measured the same way for both backends: the sum of squared distances of ALL rows
to the nearest centroid (torch assignment).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def make_data(rows: int, dim: int, true_k: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(true_k, dim)).astype(np.float32)
    spread = rng.uniform(0.5, 2.0, size=true_k).astype(np.float32)
    weights = rng.dirichlet(np.full(true_k, 2.0))
    x = np.empty((rows, dim), dtype=np.float32)
    for a in range(0, rows, 100000):
        n = min(100000, rows - a)
        lab = rng.choice(true_k, size=n, p=weights)
        x[a: a + n] = centres[lab] + rng.normal(size=(n, dim)).astype(np.float32) * spread[lab, None]
    return x


def run_one(backend: str, rows: int, dim: int, k: int, true_k: int, threads: int, n_init: int,
            sample_rows: int = 0) -> dict:
    import faiss
    import torch

    from speechtok.units.kmeans import KMeansConfig, train_kmeans

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    x = make_data(rows, dim, true_k)
    # the faiss path trains on a uniform sample of sample_rows (default 256 * K, faiss' own default
    # max_points_per_centroid); sklearn's recipe streams minibatches over all rows
    sample = (sample_rows or 256 * k) if backend == "faiss" else None
    cfg = KMeansConfig(n_clusters=k, backend=backend, sklearn_n_init=n_init,
                       sample_rows=sample if sample and sample < rows else None)
    t0, c0 = time.perf_counter(), time.process_time()
    model = train_kmeans(x, cfg)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    inertia = model.inertia(x)
    return {"backend": backend, "rows": rows, "dim": dim, "k": k, "train_s": round(model.info["train_seconds"], 1),
            "total_s": round(secs, 1), "cpu_s": round(cpu, 1), "inertia_per_row": inertia / rows,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "data_gb": x.nbytes / 2**30, "n_init": n_init, "train_rows": model.info["rows"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1000000])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--true-k", type=int, default=1000)
    p.add_argument("--backends", nargs="+", default=["faiss", "sklearn"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-init", type=int, default=20, help="sklearn n_init (fairseq: 20)")
    p.add_argument("--sample-rows", type=int, default=0, help="faiss training rows (0: 256 * K)")
    p.add_argument("--out", default=None, help="append a markdown table row per run here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print("RESULT " + json.dumps(run_one(a.backends[0], a.rows[0], a.dim, a.k, a.true_k, a.threads, a.n_init,
                                                     a.sample_rows)))
        return
    for rows in a.rows:
        for backend in a.backends:
            cmd = [sys.executable, "-m", "speechtok.benchmarks.units_kmeans", "--one", "--rows", str(rows),
                   "--dim", str(a.dim), "--k", str(a.k), "--true-k", str(a.true_k), "--backends", backend,
                   "--threads", str(a.threads), "--n-init", str(a.n_init), "--sample-rows", str(a.sample_rows)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            r = json.loads(line[0][7:])
            row = (f"| {r['backend']} | {r['rows']:,} x {r['dim']} | {r['train_rows']:,} | {r['k']} "
                   f"| {r['n_init'] if backend == 'sklearn' else '-'} "
                   f"| {r['train_s']} | {r['cpu_s']} | {r['peak_rss_gb']:.2f} (data {r['data_gb']:.2f}) "
                   f"| {r['inertia_per_row']:.3f} |")
            print(row, flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(row + "\n")


if __name__ == "__main__":
    main()
