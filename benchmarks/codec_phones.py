"""Phone information in a codec's codebooks: PNMI, phone purity and cluster purity of each
codebook's codes against exact phone alignments (the MBROLA voices of ``shared/data/tts``).

A distilled semantic codebook (Mimi's first) should carry far more phone information than the
acoustic ones, and more than the same codebook trained without distillation. Frames are labelled
with the phone under each frame's centre (as in `speechtok.benchmarks.units_eval`).

    python -m speechtok.benchmarks.codec_phones MODEL [MODEL ...] --manifest ../shared/data/tts/manifest.jsonl \\
        --speakers mbrola_us1,mbrola_us2,mbrola_us3,mbrola_en1 --max-utts 160 -o result.md
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from .units_eval import SIL, frame_labels, pnmi_purity, read_phones


def phone_items(manifest: str, speakers: set[str] | None, max_utts: int) -> list[dict]:
    """Manifest records with a ``phones`` alignment (and, if given, one of ``speakers``), round-robin
    over speakers so every voice is represented."""
    from .runner import _round_robin

    base = Path(manifest).resolve().parent
    recs = []
    for line in Path(manifest).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("phones") and (not speakers or r.get("speaker") in speakers):
                recs.append(dict(r, audio=str(base / r["audio"]), phones=str(base / r["phones"])))
    return _round_robin(recs, "speaker")[:max_utts]


@torch.inference_mode()
def codebook_phone_scores(tok, items: list[dict], skip_silence: bool = True) -> list[dict]:
    """For each codebook k: PNMI / purities of its codes against the phone labels of all frames."""
    from speechtok.audio import load_audio

    codes_per_k: list[list[np.ndarray]] = []
    labels: list[np.ndarray] = []
    for r in items:
        wav, sr = load_audio(r["audio"])
        codes = tok.encode(wav[None], sample_rate=sr)
        c = codes.codes[0, :, : int(codes.lengths[0])].cpu().numpy()
        lab = frame_labels(read_phones(Path(r["phones"])), c.shape[1], codes.frame_rate, 0.5 / codes.frame_rate)
        keep = np.array([p not in SIL for p in lab]) if skip_silence else np.ones(len(lab), bool)
        if not codes_per_k:
            codes_per_k = [[] for _ in range(c.shape[0])]
        for k in range(c.shape[0]):
            codes_per_k[k].append(c[k][keep])
        labels.append(lab[keep])
    lab = np.concatenate(labels)
    out = []
    for k, ck in enumerate(codes_per_k):
        c = np.concatenate(ck)
        p = np.unique(c, return_counts=True)[1] / len(c)
        out.append(dict(pnmi_purity(lab, c), codebook=k, entropy_bits=float(-(p * np.log2(p)).sum())))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="model names or directories (speechtok.load)")
    ap.add_argument("--manifest", required=True, help="manifest with `phones` alignments")
    ap.add_argument("--speakers", default="", help="comma-separated speakers to use (default: all with phones)")
    ap.add_argument("--max-utts", type=int, default=160)
    ap.add_argument("--codebooks", type=int, default=2, help="report the first N codebooks")
    ap.add_argument("-o", "--out", default=None, help="also write the markdown table here")
    a = ap.parse_args(argv)
    import speechtok

    torch.set_num_threads(max(1, torch.get_num_threads()))
    items = phone_items(a.manifest, set(filter(None, a.speakers.split(","))) or None, a.max_utts)
    if not items:
        raise SystemExit(f"{a.manifest}: no utterances with phone alignments for speakers {a.speakers!r}")
    cmd = "python -m speechtok.benchmarks.codec_phones " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    lines = [f"# Phone information per codebook ({len(items)} utterances, silence frames left out)\n",
             f"Command: `{cmd}`\n",
             "| model | codebook | codes used | entropy bits | PNMI | phone purity | cluster purity |",
             "|---|---|---|---|---|---|---|"]
    for m in a.models:
        tok = speechtok.load(m)
        for s in codebook_phone_scores(tok, items)[: a.codebooks]:
            lines.append(f"| {getattr(tok, 'model_id', m)} | {s['codebook']} | {s['units_used']} | {s['entropy_bits']:.2f} | "
                         f"{s['pnmi']:.3f} | "
                         f"{s['phone_purity']:.3f} | {s['cluster_purity']:.3f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
