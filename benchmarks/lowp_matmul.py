"""What lower-precision weights would buy a Mimi streaming step on this CPU (one thread).

The one-frame step is bound by reading fp32 weights (`codec_speed.py`: 384 MB per step). This
measures the kernels torch offers for smaller weights on the shapes that dominate the step: the 64
matrices of Mimi's two 8-layer transformers (``512x1536``, ``512x512``, ``512x2048``, ``2048x512``),
multiplied by 1 or 2 rows (a step feeds 2 frames at 25 Hz), cycling through all 64 so the weights
come from memory, not cache. For each kernel: milliseconds for all 64 products, bytes of weights,
and the max |error| against fp32 on one matrix. Kernels that quantize the *activations* (fbgemm
dynamic int8: one scale per tensor) make a row's result depend on the other rows of its batch,
which breaks "streamed == offline" and "batched == per item"; the table says which do.

    python -m speechtok.benchmarks.lowp_matmul [--repeats 7]

Writes ``benchmarks/results/lowp_matmul.md`` (the command at the top).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results" / "lowp_matmul.md"
SHAPES = [(1536, 512), (512, 512), (2048, 512), (512, 2048)] * 16  # [out, in], 2 transformers x 8 layers


def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(1) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _int_mm(x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric int8 activations x int8 weights, exact int32 sums, float rescale."""
    sx = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
    xq = torch.round(x / sx).to(torch.int8)
    return torch._int_mm(xq, wq.t()).float() * sx * scale


def kernels(weights: list[torch.Tensor]) -> dict:
    """name -> (prepared weights, fn(x, prepared), weight bytes, activations quantized per ...)."""
    out = {"fp32 F.linear": ([w for w in weights], lambda x, w: F.linear(x, w),
                             sum(w.numel() * 4 for w in weights), "none (exact)")}
    out["bf16 F.linear (bf16 activations)"] = (
        [w.bfloat16() for w in weights], lambda x, w: F.linear(x.bfloat16(), w).float(),
        sum(w.numel() * 2 for w in weights), "element (bf16 rounding)")
    q = [_int8_rows(w) for w in weights]
    out["int8 weights, fp32 activations (_weight_int8pack_mm)"] = (
        q, lambda x, p: torch._weight_int8pack_mm(x, p[0], p[1]), sum(w.numel() for w in weights), "none")
    out["int8 weights, bf16 activations (_weight_int8pack_mm)"] = (
        q, lambda x, p: torch._weight_int8pack_mm(x.bfloat16(), p[0], p[1].bfloat16()).float(),
        sum(w.numel() for w in weights), "element (bf16 rounding)")
    out["fp16 weights (fbgemm linear_dynamic_fp16)"] = (
        [torch.ops.quantized.linear_prepack_fp16(w, None) for w in weights],
        lambda x, p: torch.ops.quantized.linear_dynamic_fp16(x, p), sum(w.numel() * 2 for w in weights), "none")
    packed = []
    for w in weights:
        s = (w.abs().amax(1) / 127).double()
        qw = torch.quantize_per_channel(w, s, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
        packed.append(torch.ops.quantized.linear_prepack(qw, None))
    out["int8 dynamic (fbgemm linear_dynamic)"] = (
        packed, lambda x, p: torch.ops.quantized.linear_dynamic(x, p, True), sum(w.numel() for w in weights),
        "tensor (rows depend on each other)")
    out["int8 x int8, per-row scales (torch._int_mm)"] = (
        q, lambda x, p: _int_mm(x, p[0], p[1]), sum(w.numel() for w in weights), "row")
    return out


def measure(rows: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    weights = [torch.randn(o, i) * i ** -0.5 for o, i in SHAPES]
    xs = {i: torch.randn(rows, i) for i in (512, 2048)}
    results = []
    for name, (prepared, fn, nbytes, act) in kernels(weights).items():
        try:
            ref = F.linear(xs[512], weights[0])
            err = float((fn(xs[512], prepared[0]) - ref).abs().max() / ref.abs().max())
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                for w, p in zip(weights, prepared):
                    fn(xs[w.shape[1]], p)
                best = min(best, time.perf_counter() - t)
            results.append({"kernel": name, "ms": best * 1000, "mb": nbytes / 1e6, "rel_err": err, "act": act})
        except (RuntimeError, NotImplementedError) as e:  # a kernel this build lacks
            results.append({"kernel": name, "error": str(e).splitlines()[0][:120]})
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    command = ("python -m speechtok.benchmarks.lowp_matmul " + " ".join(sys.argv[1:] if argv is None else argv)).rstrip()
    lines = ["# Lower-precision weights for Mimi's transformer matrices (CPU, one thread)", "",
             f"Command: `{command}`", "",
             f"Machine: {os.cpu_count()} cores, torch {torch.__version__}, 1 thread. The 64 matrices of Mimi's two "
             "transformers, best of the repeats; error: max |y - y_fp32| / max |y_fp32| on one 512x1536 matrix "
             "(random weights and inputs).", ""]
    for rows in (1, 2):
        res = measure(rows, args.repeats)
        print(rows, res, flush=True)
        lines += [f"## {rows} row{'s' if rows > 1 else ''} per product", "",
                  "| kernel | ms for 64 products | weights MB | rel. error | activations quantized per |",
                  "|---|---|---|---|---|"]
        for r in res:
            if "error" in r:
                lines.append(f"| {r['kernel']} | failed: {r['error']} | | | |")
            else:
                lines.append(f"| {r['kernel']} | {r['ms']:.2f} | {r['mb']:.0f} | {r['rel_err']:.1e} | {r['act']} |")
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from speechtok.atomic import atomic_write_text

    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
