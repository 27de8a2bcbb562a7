"""Long-file exactness and time: `CodecTokenizer.encode_file` (streamed from disk in blocks) against a
whole-file ``load_audio`` + ``encode``, on a synthetic file (noise shaped like speech loudness) of
``--minutes`` at each ``--rates``. Prints frames that differ and the wall time of each path.

    python -m speechtok.benchmarks.long_files --minutes 20 --rates 16000 44100 [--model NAME] [-o result.md]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_file(path: Path, minutes: float, rate: int, seed: int = 0) -> Path:
    import soundfile as sf

    g = np.random.default_rng(seed)
    n = int(minutes * 60 * rate)
    env = np.repeat(g.uniform(0.02, 0.3, n // rate + 1), rate)[:n]  # loudness changing every second
    sf.write(str(path), (g.standard_normal(n) * env).astype(np.float32), rate, subtype="PCM_16")
    return path


def measure(tok, path: Path) -> dict:
    import speechtok

    t0 = time.perf_counter()
    wav, sr = speechtok.load_audio(path, sample_rate=tok.sample_rate)
    whole = tok.encode(wav, sample_rate=sr)
    t1 = time.perf_counter()
    streamed = tok.encode_file(path)
    t2 = time.perf_counter()
    a, b = whole.codes[0], streamed.codes[0]
    differ = int((a != b).any(dim=0).sum()) if a.shape == b.shape else -1
    return {"frames": int(a.shape[-1]), "differ": differ, "whole_s": t1 - t0, "file_s": t2 - t1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="built-in name or model directory (default: the default codec)")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--rates", type=int, nargs="+", default=[16000, 44100])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    import speechtok

    torch.set_num_threads(args.threads)
    tok = speechtok.load(args.model, encoder_only=True)
    rows = ["| input rate | frames | frames differing | whole file (s) | encode_file (s) |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        for rate in args.rates:
            r = measure(tok, make_file(Path(d) / f"long_{rate}.wav", args.minutes, rate))
            rows.append(f"| {rate} | {r['frames']} | {r['differ']} | {r['whole_s']:.1f} | {r['file_s']:.1f} |")
            print(rows[-1], flush=True)
    text = "\n".join([f"{tok.model_id}, {args.minutes:g} min, {args.threads} thread(s)", "", *rows, "",
                      "    python -m speechtok.benchmarks.long_files " + shlex.join(sys.argv[1:] if argv is None
                                                                                      else argv)])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
