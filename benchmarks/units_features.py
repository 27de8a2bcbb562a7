"""Batched feature extraction vs a per-file loop (same files, same numbers).

    python -m speechtok.benchmarks.units_features --manifest /work/shared/data/real/manifest.jsonl \
        --source ljspeech32 --files 16 --out benchmarks/results/units_features.md

Extractors: a HuBERT-base architecture (torchaudio ``hubert_base`` shape, random weights: speed does
not depend on the values; layer 6) and, with ``--whisper-model``, the Whisper encoder (CTranslate2).
"Loop": one file at a time (B=1). "Batched": files sorted by length, padded into batches of at
most ``--batch-seconds`` of audio and run with ``lengths`` (what `extract_to_store` does).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HUBERT_BASE = dict(extractor_mode="group_norm",
                   extractor_conv_layer_config=[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2,
                   extractor_conv_bias=False, encoder_embed_dim=768, encoder_projection_dropout=0.0,
                   encoder_pos_conv_kernel=128, encoder_pos_conv_groups=16, encoder_num_layers=12,
                   encoder_num_heads=12, encoder_attention_dropout=0.0, encoder_ff_interm_features=3072,
                   encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
                   encoder_layer_drop=0.0)


def run(ext, wavs: list[torch.Tensor], batch_seconds: float) -> tuple[float, float, list]:
    t0 = time.perf_counter()
    loop = [ext.extract(w[None, None]).feats[0] for w in wavs]
    t_loop = time.perf_counter() - t0
    order = sorted(range(len(wavs)), key=lambda i: wavs[i].shape[0])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * wavs[i].shape[0] > batch_seconds * 16000:
            batches.append(cur)
            cur = []
        cur.append(i)
    batches.append(cur)
    t0 = time.perf_counter()
    out = [None] * len(wavs)
    for b in batches:
        lens = torch.tensor([wavs[i].shape[0] for i in b])
        pad = torch.zeros(len(b), 1, int(lens.max()))
        for j, i in enumerate(b):
            pad[j, 0, : lens[j]] = wavs[i]
        f = ext.extract(pad, lens)
        for j, i in enumerate(b):
            out[i] = f.unbatch()[j]
    t_batch = time.perf_counter() - t0
    err = max(float((a - b).abs().max()) for a, b in zip(loop, out))
    return t_loop, t_batch, [err, len(batches)]


def main(argv=None):
    from speechtok.audio import load_audio
    from speechtok.units.features.ssl import SSLConfig, build_ssl_extractor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--source", default=None, help="only manifest lines whose audio path starts with this")
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--batch-seconds", type=float, default=60.0)
    ap.add_argument("--whisper-model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    root = Path(a.manifest).parent
    recs = [json.loads(line) for line in open(a.manifest)]
    recs = [r for r in recs if a.source is None or r["audio"].startswith(a.source)][: a.files]
    wavs = [load_audio(root / r["audio"], sample_rate=16000)[0][0] for r in recs]
    secs = sum(w.shape[0] for w in wavs) / 16000
    rows = ["| extractor | files | audio s | loop s | batched s | speed-up | max abs diff | batches |",
            "|---|---|---|---|---|---|---|---|"]
    torch.manual_seed(0)
    exts = [("HuBERT-base arch, layer 6 (torchaudio, CPU)",
             build_ssl_extractor(SSLConfig(kind="hubert", layer=6, arch=HUBERT_BASE)))]
    if a.whisper_model:
        from speechtok.units.features import load_extractor

        exts.append(("Whisper-base encoder (CPU)", load_extractor("whisper", a.whisper_model)))
    for name, ext in exts:
        ext.extract(wavs[0][None, None])  # warm-up
        t_loop, t_batch, (err, nb) = run(ext, wavs, a.batch_seconds)
        rows.append(f"| {name} | {len(wavs)} | {secs:.0f} | {t_loop:.1f} | {t_batch:.1f} | {t_loop / t_batch:.2f}x "
                    f"| {err:.1e} | {nb} |")
        print(rows[-1], flush=True)
    text = (f"# Batched feature extraction vs a per-file loop\n\nCommand: `python -m speechtok.benchmarks.units_features "
            f"--manifest {a.manifest} --source {a.source} --files {a.files} --batch-seconds {a.batch_seconds}"
            f"{' --whisper-model ' + a.whisper_model if a.whisper_model else ''}`\n\n"
            f"Machine: 2 CPU cores shared with other jobs ({a.threads} threads); timings are wall-clock.\n\n"
            + "\n".join(rows) + "\n")
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
