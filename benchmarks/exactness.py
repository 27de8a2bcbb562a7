"""Exactness at a model's real size: batched == per item, streamed == offline, windowed long file ==
whole file, on real speech, with the cost of the exact batched path.

    python -m speechtok.benchmarks.exactness [--model DIR|NAME] [--compositions 12] [--stream-files 6] \
        [--threads 1] [-o benchmarks/results/exactness_mimi]

Without ``--model`` it builds Mimi at its published shapes (``transformers.MimiModel(MimiConfig())``,
random weights and codebooks: the shapes and kernels are Mimi's, the numbers mean nothing else) and
loads it through speechtok. Speech: the shipped bench-mini set (21 held-out real speakers) and the
LJSpeech sample.

Measured:
- **batched**: random batch compositions (2-8 items) through ``tok.encode`` with padding, against
  each item encoded alone; also the same batches as one padded batch through the model
  (``tok.per_item_batches = False``, how encoding ran before) for comparison;
- **streamed**: files streamed in random chunk sizes against offline encoding; every differing
  frame's first differing codebook is looked up in `CodecTokenizer.code_margins` (near-tie or not);
  the same chunks through an aligned stream (``tok.stream(1, aligned=True)``), which must be exact;
- **long file**: all files concatenated (~1.5 min) through ``encode_file`` in random block sizes,
  against ``encode`` of the whole;
- **cost**: audio seconds encoded per second, per-item (the exact path) vs one padded batch.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SPEECH_DIR = REPO / "benchmarks" / "data" / "bench-mini" / "audio"
SAMPLE = REPO / "tokenizers" / "data" / "sample_ljspeech.flac"
NEAR_TIE = 1e-5  # `code_margins` below this is within float rounding of a tie


def random_mimi(directory: Path, seed: int = 0) -> Path:
    """Save ``transformers.MimiModel`` with the published default config and random weights and
    codebooks (HF initialises codebooks to zero) into ``directory``."""
    import transformers

    torch.manual_seed(seed)
    hf = transformers.MimiModel(transformers.MimiConfig()).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in hf.modules():
            if hasattr(mod, "embed_sum"):  # a Mimi codebook (transformers' own module)
                mod.embed_sum.copy_(torch.randn(mod.embed_sum.shape, generator=g))
                mod.cluster_usage.copy_(torch.rand(mod.cluster_usage.shape, generator=g) + 0.5)
    hf.save_pretrained(directory)
    return directory


def real_speech(sample_rate: int) -> list[tuple[str, torch.Tensor]]:
    """The shipped real speech as ``(name, [1, S])`` at ``sample_rate``, first channel."""
    from speechtok.audio import load_audio

    files = sorted(SPEECH_DIR.glob("*.flac")) + [SAMPLE]
    return [(f.stem, load_audio(f, sample_rate=sample_rate)[0][:1]) for f in files]


def pad_batch(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.shape[-1] for w in wavs])
    x = torch.zeros(len(wavs), wavs[0].shape[0], int(lengths.max()))
    for i, w in enumerate(wavs):
        x[i, :, : w.shape[-1]] = w
    return x, lengths


def count_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a != b).sum())


def check_batches(tok, speech, compositions: int, rng: random.Random) -> dict:
    per_item = {name: tok.encode(w, sample_rate=tok.sample_rate).codes[0] for name, w in speech}
    diff_exact = diff_padded = total = 0
    t_exact = t_padded = seconds = 0.0
    sizes = []
    for _ in range(compositions):
        pick = rng.sample(range(len(speech)), rng.randint(2, min(8, len(speech))))
        sizes.append(len(pick))
        x, lengths = pad_batch([speech[i][1] for i in pick])
        t0 = time.perf_counter()
        exact = tok.encode(x, sample_rate=tok.sample_rate, lengths=lengths).codes
        t1 = time.perf_counter()
        tok.per_item_batches = False
        padded = tok.encode(x, sample_rate=tok.sample_rate, lengths=lengths).codes
        tok.per_item_batches = True
        t2 = time.perf_counter()
        t_exact, t_padded = t_exact + t1 - t0, t_padded + t2 - t1
        seconds += float(lengths.sum()) / tok.sample_rate
        for j, i in enumerate(pick):
            ref = per_item[speech[i][0]]
            n = ref.shape[-1]
            total += ref.numel()
            diff_exact += count_diff(exact[j, :, :n], ref)
            diff_padded += count_diff(padded[j, :, :n], ref)
    return {"compositions": compositions, "batch_sizes": sizes, "codes_compared": total,
            "differing_codes_per_item_path": diff_exact, "differing_codes_padded_batch": diff_padded,
            "audio_seconds": round(seconds, 1),
            "per_item_audio_s_per_s": round(seconds / t_exact, 2),
            "padded_batch_audio_s_per_s": round(seconds / t_padded, 2)}


def stream_codes(tok, w: torch.Tensor, sizes: list[int], aligned: bool) -> torch.Tensor:
    """``w`` ``[C, S]`` streamed in chunks of ``sizes`` samples -> codes ``[K, T]``."""
    parts, pos = [], 0
    with tok.stream(1, aligned=aligned) as s:
        for n in sizes:
            parts.append(s.encode(w[None, :, pos:pos + n]))
            pos += n
        parts.append(s.flush())
    return torch.cat(parts, dim=-1)[0]


def check_streaming(tok, speech, n_files: int, rng: random.Random) -> dict:
    hop = tok.hop_length
    total = diff = frames_diff = near = aligned_diff = 0
    worst_margin = 0.0
    chunkings = []
    for name, w in rng.sample(speech, min(n_files, len(speech))):
        codes, margins = tok.code_margins(w, sample_rate=tok.sample_rate)
        ref = codes.codes[0]
        hi = rng.choice([hop // 3, hop, 4 * hop, 20 * hop])
        sizes, pos = [], 0
        while pos < w.shape[-1]:
            sizes.append(rng.randint(1, hi))
            pos += sizes[-1]
        streamed = stream_codes(tok, w, sizes, aligned=False)
        aligned_diff += count_diff(stream_codes(tok, w, sizes, aligned=True), ref)
        chunkings.append({"file": name, "chunks": len(sizes), "max_chunk_samples": hi})
        total += ref.numel()
        d = streamed != ref
        diff += int(d.sum())
        for t in torch.nonzero(d.any(dim=0)).flatten().tolist():
            frames_diff += 1
            k = int(torch.nonzero(d[:, t])[0])  # later codebooks follow from the first flip's residual
            m = float(margins[0, k, t])
            worst_margin = max(worst_margin, m)
            near += m < NEAR_TIE
    return {"files": chunkings, "codes_compared": total, "differing_codes": diff, "differing_codes_aligned": aligned_diff,
            "differing_frames": frames_diff, "first_flips_at_near_ties": near,
            "largest_margin_of_a_first_flip": worst_margin, "near_tie_threshold": NEAR_TIE}


def check_long_file(tok, speech, rng: random.Random) -> dict:
    import soundfile as sf

    whole = torch.cat([w for _, w in speech], dim=-1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "long.flac"
        sf.write(str(path), whole[0].numpy(), tok.sample_rate, subtype="PCM_24")
        from speechtok.audio import load_audio

        wav, _ = load_audio(path, sample_rate=tok.sample_rate)
        ref = tok.encode(wav, sample_rate=tok.sample_rate).codes
        block = round(rng.uniform(2.0, 12.0), 2)
        streamed = tok.encode_file(path, block_seconds=block).codes
    return {"seconds": round(whole.shape[-1] / tok.sample_rate, 1), "block_seconds": block,
            "codes_compared": ref.numel(), "differing_codes": count_diff(streamed, ref)}


def window_one_cost(tok, speech, n_files: int = 4) -> dict:
    """Offline encoding speed with ``window_frames=1`` (an aligned stream without added latency
    equals it) against the model's own window, on the same files."""
    one = tok.with_window_frames(1)
    speed = {}
    for name, t in (("default", tok), ("one", one)):
        seconds, start = 0.0, time.perf_counter()
        for _, w in speech[:n_files]:
            t.encode(w, sample_rate=tok.sample_rate)
            seconds += w.shape[-1] / tok.sample_rate
        speed[name] = round(seconds / (time.perf_counter() - start), 2)
    return {"window_frames": tok.cfg.window_frames, "audio_s_per_s": speed["default"],
            "window_one_audio_s_per_s": speed["one"]}


def near_tie_rate(tok, speech, n_files: int = 6, seed: int = 0) -> dict:
    """How common near-ties are (codes with a margin below `NEAR_TIE`), and whether the margin
    predicts flips: the latent of each window is perturbed by relative noise of ``eps`` (10x to
    10,000x the ~1e-7 that other matrix shapes cause) and every frame whose codes change is checked
    for its first changed codebook's margin."""
    model, step = tok.model, tok.cfg.window_frames * tok.hop_length
    g = torch.Generator().manual_seed(seed)
    margins = []
    perturbed = {eps: [0, 0, 0.0] for eps in (1e-6, 1e-5, 1e-4, 1e-3)}  # eps: frames changed, at near-tie, worst
    with torch.inference_mode():
        for _, w in speech[:n_files]:
            codes, m = tok.code_margins(w, sample_rate=tok.sample_rate)
            margins.append(m.flatten())
            n = codes.codes.shape[-1]
            x = torch.nn.functional.pad(w, (0, n * tok.hop_length - w.shape[-1]))[None]
            state = model.init_encoder_state(1)
            zs = torch.cat([model.encode_latent(x[..., i:i + step], state) for i in range(0, x.shape[-1], step)], -1)
            for eps, acc in perturbed.items():
                noisy = zs * (1 + eps * torch.randn(zs.shape, generator=g))
                d = model.quantizer.encode(noisy, None, None)[0] != codes.codes[0]
                for t in torch.nonzero(d.any(dim=0)).flatten().tolist():
                    k = int(torch.nonzero(d[:, t])[0])
                    acc[0] += 1
                    acc[1] += float(m[0, k, t]) < NEAR_TIE * eps / 1e-7
                    acc[2] = max(acc[2], float(m[0, k, t]))
    margins = torch.cat(margins)
    return {"codes": margins.numel(), "near_ties": int((margins < NEAR_TIE).sum()),
            "median_margin": float(margins.median()),
            "perturbation": [{"relative_eps": eps, "frames_changed": a[0],
                              "first_flip_margin_below_threshold_scaled": a[1], "largest_first_flip_margin": a[2]}
                             for eps, a in perturbed.items()]}


def run(model: str | None, compositions: int, stream_files: int, seed: int) -> dict:
    import speechtok

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        directory = model or str(random_mimi(Path(d) / "mimi-random"))
        tok = speechtok.load(directory)
        speech = real_speech(tok.sample_rate)
        out = {"model": model or "mimi (published default config, random weights)", "model_id": tok.model_id,
               "codebooks": tok.num_codebooks, "frame_rate": tok.frame_rate, "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "speech_files": len(speech)}
        t0 = time.perf_counter()
        out["batched"] = check_batches(tok, speech, compositions, rng)
        out["streamed"] = check_streaming(tok, speech, stream_files, rng)
        out["long_file"] = check_long_file(tok, speech, rng)
        out["near_tie_rate"] = near_tie_rate(tok, speech)
        out["window_one"] = window_one_cost(tok, speech)
        out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(r: dict, command: str) -> str:
    b, s, lf, nt = r["batched"], r["streamed"], r["long_file"], r["near_tie_rate"]
    return "\n".join([
        f"# Exactness at {r['model']}", "", f"`{command}` ({r['wall_seconds']} s, torch {r['torch']}, "
        f"{r['torch_threads']} thread(s)); {r['codebooks']} codebooks at {r['frame_rate']} Hz; "
        f"{r['speech_files']} real-speech files.", "",
        "| check | codes compared | differing codes |", "|---|---:|---:|",
        f"| batched with padding vs per item ({b['compositions']} random batches of 2-8) | "
        f"{b['codes_compared']} | {b['differing_codes_per_item_path']} |",
        f"| same batches as one padded batch through the model (before) | {b['codes_compared']} | "
        f"{b['differing_codes_padded_batch']} |",
        f"| streamed in random chunks vs offline ({len(s['files'])} files) | {s['codes_compared']} | "
        f"{s['differing_codes']} ({s['differing_frames']} frames) |",
        f"| same chunks, aligned stream (`tok.stream(1, aligned=True)`) vs offline | {s['codes_compared']} | "
        f"{s['differing_codes_aligned']} |",
        f"| long file ({lf['seconds']} s) in {lf['block_seconds']} s blocks vs whole | {lf['codes_compared']} | "
        f"{lf['differing_codes']} |", "",
        f"Streamed flips: {s['first_flips_at_near_ties']} of {s['differing_frames']} differing frames start at a "
        f"near-tie (margin < {s['near_tie_threshold']:g}); largest first-flip margin "
        f"{s['largest_margin_of_a_first_flip']:.2e}. Near-ties overall: {nt['near_ties']} of {nt['codes']} codes "
        f"(median margin {nt['median_margin']:.2e}).", "",
        "Does the margin predict flips? Each window's latent perturbed by relative noise eps (10x to 10,000x "
        "the ~1e-7 rounding other matrix shapes cause), first changed codebook of every changed frame:", "",
        "| eps | frames changed | largest margin of a first flip | within 1e-5 x eps/1e-7 |", "|---|---:|---:|---:|",
        *[f"| {p['relative_eps']:g} | {p['frames_changed']} | {p['largest_first_flip_margin']:.2e} | "
          f"{p['first_flip_margin_below_threshold_scaled']} |" for p in nt["perturbation"]], "",
        f"Cost ({b['audio_seconds']} s of audio): per item {b['per_item_audio_s_per_s']} audio s/s, one padded "
        f"batch {b['padded_batch_audio_s_per_s']} audio s/s. Offline with window_frames=1 (what an aligned "
        f"stream without added latency equals): {r['window_one']['window_one_audio_s_per_s']} audio s/s vs "
        f"{r['window_one']['audio_s_per_s']} with window_frames={r['window_one']['window_frames']}.", ""])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a model directory or built-in name (default: Mimi shapes, random weights)")
    p.add_argument("--compositions", type=int, default=12)
    p.add_argument("--stream-files", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", type=Path, help="directory for result.json and result.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    r = run(a.model, a.compositions, a.stream_files, a.seed)
    command = "python -m speechtok.benchmarks.exactness " + shlex.join(sys.argv[1:] if argv is None else argv)
    md = markdown(r, command)
    print(md)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "result.json").write_text(json.dumps(r, indent=1) + "\n")
        (a.out / "result.md").write_text(md)


if __name__ == "__main__":
    main()
