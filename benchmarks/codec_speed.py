"""Codec speed on CPU: speechtok's codec vs ``transformers.MimiModel`` with the same weights.

Measures, on the same real speech (LJSpeech from ``shared/``, else the shipped sample tiled):

1. encode + decode real-time factor (RTF = compute seconds / audio seconds) of speechtok and of
   ``transformers.MimiModel`` (Mimi's published default config, random weights with random
   codebooks; both load the same ``save_pretrained`` directory), and that codes are identical;
   the same against kyutai ``moshi``'s ``MimiModel`` where moshi imports (its weights file loaded
   by ``speechtok.load``), with moshi's own one-frame streaming step;
2. streaming step latency for one 80 ms frame (encode + decode) on one thread;
3. peak RSS of a subprocess encoding a 1-hour file (real speech tiled) the way ``speechtok encode``
   does (`speechtok.files.encode_files`: encode-only load, the file streamed from disk);
4. the one-frame step of the shipped default model, and the memory-bandwidth floor of a step.

    python -m speechtok.benchmarks.codec_speed [--seconds 20] [--threads 2] [--hour-minutes 60]

Writes ``benchmarks/results/codec_speed.md`` (the command at the top).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "real" / "ljspeech32"
SAMPLE = ROOT / "tokenizers" / "data" / "sample_ljspeech.flac"
RESULTS = Path(__file__).resolve().parent / "results" / "codec_speed.md"


def real_speech(seconds: float, sample_rate: int) -> torch.Tensor:
    """``[1, S]`` real speech at ``sample_rate``: LJSpeech utterances concatenated (tiled if short)."""
    from speechtok.audio import load_audio

    files = sorted(SHARED.glob("*.flac")) if SHARED.is_dir() else [SAMPLE]
    need = int(seconds * sample_rate)
    parts, total = [], 0
    while total < need:
        for f in files:
            wav, _ = load_audio(f, sample_rate=sample_rate)
            parts.append(wav)
            total += wav.shape[-1]
            if total >= need:
                break
    return torch.cat(parts, dim=-1)[:, :need]


def make_hf_mimi(directory: Path, seed: int = 0):
    """A ``MimiModel`` with the default (published) config, random weights and random codebooks."""
    from transformers import MimiConfig, MimiModel

    torch.manual_seed(seed)
    hf = MimiModel(MimiConfig()).eval()
    with torch.no_grad():
        for mod in hf.modules():
            if hasattr(mod, "embed_sum"):
                mod.embed_sum.normal_()
                mod.cluster_usage.uniform_(0.5, 2.0)
                mod._embed = None
    hf.save_pretrained(directory)
    return hf


def make_moshi_mimi(path: Path, seed: int = 0):
    """kyutai moshi's ``MimiModel`` (32 codebooks, random weights and codebooks) saved to the
    single safetensors file moshi ships (``tokenizer-*.safetensors`` naming). Needs ``moshi``."""
    from moshi.models import loaders
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    m = loaders.get_mimi(None, device="cpu", num_codebooks=32).eval()
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith("embedding_sum"):
                buf.normal_()
            elif name.endswith("cluster_usage"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("_initialized"):
                buf.fill_(1.0)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return m


def moshi_section(seconds: float, repeats: int, workdir: Path) -> dict:
    """speechtok vs kyutai moshi's own Mimi, same weights (moshi's file loaded by `speechtok.load`):
    offline encode + decode time, code equality, and moshi's one-frame streaming step on one thread."""
    try:
        import moshi  # noqa: F401
        m = make_moshi_mimi(workdir / "moshi-mimi.safetensors")
    except ImportError as e:
        return {"skipped": f"moshi does not import ({e}); install it with `pip install --no-deps moshi==0.2.13`"}
    import speechtok

    tok = speechtok.load(workdir / "moshi-mimi.safetensors")
    hop = tok.hop_length
    x = real_speech(seconds, tok.sample_rate)
    x = x[:, : x.shape[-1] // hop * hop][None]

    def run_moshi():
        with torch.no_grad():
            c = m.encode(x)
            return c, m.decode(c)

    def run_ours():
        codes = tok.encode(x, sample_rate=tok.sample_rate)
        return codes, tok.decode(codes).audio

    (ref, ref_audio), (codes, audio) = run_moshi(), run_ours()
    out = {"audio_seconds": x.shape[-1] / tok.sample_rate, "codes_identical": bool(torch.equal(codes.codes, ref)),
           "audio_max_abs_diff": float((audio - ref_audio[..., : audio.shape[-1]]).abs().max()),
           "moshi_s": best_time(run_moshi, repeats), "ours_s": best_time(run_ours, repeats)}
    out["speedup"] = out["moshi_s"] / out["ours_s"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        steps = []
        with torch.no_grad(), m.streaming(1):
            for i in range(70):
                t = time.perf_counter()
                m.decode(m.encode(x[..., i * hop:(i + 1) * hop]))
                if i >= 10:
                    steps.append(time.perf_counter() - t)
        out["moshi_step_ms_median"] = statistics.median(steps) * 1000
        out["ours_step"] = step_latency(tok, floor=False)  # the bandwidth floor is measured once, in main
    finally:
        torch.set_num_threads(threads)
    return out


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def rtf_section(hf, tok, seconds: float, repeats: int) -> dict:
    hop = tok.hop_length
    x = real_speech(seconds, tok.sample_rate)
    x = x[:, : x.shape[-1] // hop * hop][None]  # whole frames: HF and speechtok pad partial frames differently
    secs = x.shape[-1] / tok.sample_rate

    def run_hf():
        with torch.inference_mode():
            c = hf.encode(x).audio_codes
            return c, hf.decode(c).audio_values

    def run_ours():
        codes = tok.encode(x, sample_rate=tok.sample_rate)
        return codes, tok.decode(codes).audio

    (hf_codes, hf_audio), (codes, audio) = run_hf(), run_ours()  # warm-up + equality
    out = {
        "audio_seconds": secs,
        "codes_identical": bool(torch.equal(codes.codes, hf_codes)),
        "audio_max_abs_diff": float((audio - hf_audio).abs().max()),
        "audio_peak": float(hf_audio.abs().max()),
        "hf_s": best_time(run_hf, repeats),
        "ours_s": best_time(run_ours, repeats),
    }
    out["hf_rtf"], out["ours_rtf"] = out["hf_s"] / secs, out["ours_s"] / secs
    out["speedup"] = out["hf_s"] / out["ours_s"]
    return out


def step_latency(tok, steps: int = 60, warmup: int = 10, batch_size: int = 1, floor: bool = True) -> dict:
    """Median/p95 of one streaming step (encode one frame, decode its codes) on one thread, for
    ``batch_size`` concurrent streams (items start at different places of the speech)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hop = tok.hop_length
        n = (steps + warmup) * hop
        speech = real_speech((steps + warmup) / tok.frame_rate * (batch_size + 1) + 1, tok.sample_rate)
        x = torch.stack([speech[:, i * n:(i + 1) * n] for i in range(batch_size)])  # [B, 1, n]
        enc, dec = [], []
        with tok.stream(batch_size) as s:
            for i in range(steps + warmup):
                chunk = x[..., i * hop:(i + 1) * hop]
                t0 = time.perf_counter()
                codes = s.encode(chunk)
                t1 = time.perf_counter()
                s.decode(codes)
                t2 = time.perf_counter()
                if i >= warmup:
                    enc.append(t1 - t0)
                    dec.append(t2 - t1)
        tot = [a + b for a, b in zip(enc, dec)]
        q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))] * 1000  # noqa: E731
        return {"batch_size": batch_size, "encode_ms_median": statistics.median(enc) * 1000,
                "decode_ms_median": statistics.median(dec) * 1000, "step_ms_median": statistics.median(tot) * 1000,
                "step_ms_p95": q(tot, 0.95), "frame_ms": 1000 / tok.frame_rate,
                **(step_memory_floor(tok) if floor else {})}
    finally:
        torch.set_num_threads(threads)


def read_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Single-thread memory read bandwidth (GB/s): best of ``repeats`` sums over ``mib`` MiB
    (larger than the caches a step's weights could stay in)."""
    a = torch.ones(mib * 2**20 // 4)
    best = min(_timed(a.sum) for _ in range(repeats))
    return a.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_memory_floor(tok) -> dict:
    """What a one-frame step must read at least: every weight of the model once (batch 1: each
    matrix product is a matrix-vector product) plus the codebook tables searched, against the
    measured single-thread read bandwidth: the latency floor of fp32 weights on this machine."""
    m = tok.model
    weights = sum(p.numel() * p.element_size() for p in m.parameters())
    tables = sum(cb.codebook_size * cb.dim * 4 for cb in m.quantizer.modules()
                 if hasattr(cb, "codebook_size") and hasattr(cb, "dim") and hasattr(cb, "_lookup"))
    bw = read_bandwidth_gbs()
    mb = (weights + tables) / 1e6
    return {"bytes_per_step_mb": mb, "read_gbs": bw, "floor_ms": mb / 1e3 / bw * 1000}


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB): ``VmHWM`` of /proc/self/status. (``ru_maxrss``
    is not used: Linux carries the parent's high-water mark over fork + exec into it.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_worker(model_dir: str, wav_path: str, threads: int) -> None:
    """Subprocess: encode a long file the way ``speechtok encode`` does (`encode_files`: encode-only
    load, the file streamed from disk in blocks); print JSON with peak RSS."""
    import soundfile as sf

    import speechtok
    from speechtok.codesfile import load_codes
    from speechtok.files import encode_files

    torch.set_num_threads(threads)
    rss_import = peak_rss_mib()  # torch, speechtok and their libraries, before any model
    tok = speechtok.load(model_dir, encoder_only=True)  # what encode_files / the CLI load
    _ = tok.model_id
    rss_loaded = peak_rss_mib()
    info = sf.info(wav_path)
    out = Path(wav_path).with_suffix(".stok")
    t = time.perf_counter()
    report = encode_files([wav_path], out, tok, progress=False)
    elapsed = time.perf_counter() - t
    if not report.ok:
        raise SystemExit(f"encode failed: {report.failed}")
    codes = load_codes(out)
    print(json.dumps({"audio_seconds": info.frames / info.samplerate, "frames": codes.codes.shape[-1],
                      "encode_s": elapsed, "rss_after_import_mib": rss_import, "rss_after_load_mib": rss_loaded,
                      "peak_rss_mib": peak_rss_mib()}))


def rss_section(model_dir: Path, minutes: float, threads: int, workdir: Path) -> dict:
    import soundfile as sf

    sr = 24000
    seg = real_speech(60.0, sr)[0].numpy()
    wav_path = workdir / "long.wav"
    with sf.SoundFile(str(wav_path), "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for _ in range(int(round(minutes))):
            f.write(seg)
    cmd = [sys.executable, "-m", "speechtok.benchmarks.codec_speed", "--rss-worker", str(model_dir), str(wav_path),
           "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if res.returncode:
        raise RuntimeError(f"RSS worker failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="speech for the RTF measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hour-minutes", type=float, default=60.0, help="length of the long file (0: skip)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--rss-worker", nargs=2, metavar=("MODEL_DIR", "WAV"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_worker:
        return rss_worker(args.rss_worker[0], args.rss_worker[1], args.threads)

    import speechtok

    torch.set_num_threads(args.threads)
    command = "python -m speechtok.benchmarks.codec_speed " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf = make_hf_mimi(tmp / "mimi")
        tok = speechtok.load(tmp / "mimi")
        rtf = rtf_section(hf, tok, args.seconds, args.repeats)
        print("rtf", rtf, flush=True)
        lat = step_latency(tok)
        lat8 = step_latency(tok, batch_size=8, floor=False)  # a server's concurrent streams
        print("step", lat, "\nstep x8", lat8, flush=True)
        default = speechtok.load()  # the shipped default model: its own one-frame step
        lat_default = step_latency(default)
        print("step default", lat_default, flush=True)
        del hf
        mo = moshi_section(args.seconds, args.repeats, tmp)
        print("moshi", mo, flush=True)
        rss = rss_section(tmp / "mimi", args.hour_minutes, args.threads, tmp) if args.hour_minutes > 0 else None
        print("rss", rss, flush=True)
    load = os.getloadavg()
    lines = [
        "# Codec speed (CPU)", "", f"Command: `{command}`", "",
        f"Machine: {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads; "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min; shared machine).",
        "Model: Mimi's published default config (24 kHz, 12.5 Hz, 32 codebooks of 2048) with random weights "
        "and random codebooks, saved by `transformers.MimiModel.save_pretrained` and loaded by both.",
        "", "## Encode + decode, real speech", "",
        "| | seconds | RTF |", "|---|---|---|",
        f"| transformers MimiModel | {rtf['hf_s']:.3f} | {rtf['hf_rtf']:.4f} |",
        f"| speechtok | {rtf['ours_s']:.3f} | {rtf['ours_rtf']:.4f} |", "",
        f"Audio: {rtf['audio_seconds']:.2f} s. Speed-up: **{rtf['speedup']:.2f}x** (target >= 1.3x). "
        f"Codes identical: **{rtf['codes_identical']}**; decoded audio max |diff| {rtf['audio_max_abs_diff']:.2e} "
        f"(peak {rtf['audio_peak']:.2f}). Best of {args.repeats}.",
        "", "## Streaming step, one thread", "",
        f"One frame = {lat['frame_ms']:.0f} ms of audio. Encode {lat['encode_ms_median']:.2f} ms + decode "
        f"{lat['decode_ms_median']:.2f} ms; step median **{lat['step_ms_median']:.2f} ms**, p95 "
        f"{lat['step_ms_p95']:.2f} ms (target < 20 ms).",
        "",
        f"Eight concurrent streams (`tok.stream(8)`, one thread): step median {lat8['step_ms_median']:.2f} ms for "
        f"all eight, {lat8['step_ms_median'] / 8:.2f} ms per stream: the weights are read once per step "
        "whatever the batch, so a server gains throughput, not single-stream latency.",
        "",
        f"Floor for fp32 weights: a batch-1 step reads every weight once plus the codebook tables, "
        f"{lat['bytes_per_step_mb']:.0f} MB; at this machine's measured single-thread read bandwidth "
        f"({lat['read_gbs']:.1f} GB/s, a 512 MiB sum) that alone takes **{lat['floor_ms']:.1f} ms**. "
        "So < 20 ms per Mimi-size step is out of reach on one core here without smaller weights "
        "(bf16/int8), which would change the codes.",
        "",
        f"The shipped default model (`{default.model_id}`, {1000 / default.frame_rate:.0f} ms frames): "
        f"encode {lat_default['encode_ms_median']:.2f} ms + decode {lat_default['decode_ms_median']:.2f} ms; "
        f"step median **{lat_default['step_ms_median']:.2f} ms**, p95 {lat_default['step_ms_p95']:.2f} ms "
        f"(floor {lat_default['floor_ms']:.2f} ms).",
    ]
    lines += ["", "## kyutai moshi's Mimi, same weights", ""]
    if "skipped" in mo:
        lines.append(f"Skipped: {mo['skipped']}.")
    else:
        lines += [
            "moshi 0.2.13's `MimiModel` (32 codebooks, random weights and codebooks) saved as moshi's single "
            "safetensors file and loaded by `speechtok.load(file)`.", "",
            "| | encode + decode, seconds | RTF | one-frame step, one thread |", "|---|---|---|---|",
            f"| moshi MimiModel | {mo['moshi_s']:.3f} | {mo['moshi_s'] / mo['audio_seconds']:.4f} | "
            f"{mo['moshi_step_ms_median']:.2f} ms |",
            f"| speechtok | {mo['ours_s']:.3f} | {mo['ours_s'] / mo['audio_seconds']:.4f} | "
            f"{mo['ours_step']['step_ms_median']:.2f} ms |", "",
            f"Speed-up **{mo['speedup']:.2f}x**; codes identical: **{mo['codes_identical']}**; decoded audio max "
            f"|diff| {mo['audio_max_abs_diff']:.2e}. moshi's streaming step (`with mimi.streaming(1)`, "
            "encode then decode of one 80 ms frame) is the reference implementation's own latency on this core."]
    if rss:
        lines += ["", "## 1-hour file, peak RSS", "",
                  f"{rss['audio_seconds'] / 3600:.2f} h of real speech (tiled, 24 kHz WAV) encoded the way "
                  "`speechtok encode long.wav -o out/` does it (`speechtok.files.encode_files`: the model loaded "
                  "with `encoder_only=True`, the file streamed from disk in 30 s blocks through a codec stream): "
                  f"{rss['frames']} frames in {rss['encode_s']:.0f} s; peak RSS (VmHWM) after the imports "
                  f"{rss['rss_after_import_mib']:.0f} MiB, after loading the model {rss['rss_after_load_mib']:.0f} MiB, "
                  f"peak **{rss['peak_rss_mib']:.1f} MiB** (target < 1024 MiB)."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from speechtok.atomic import atomic_write_text

    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
