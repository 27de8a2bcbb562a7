"""``speechtok bench TOKENIZER... --data MANIFEST``: bitrate, reconstruction, intelligibility, speed."""
from __future__ import annotations

import dataclasses
import shlex
import sys

import click


@click.command("bench")
@click.argument("tokenizers", nargs=-1, required=True)
@click.option("--data", required=True,
              help="Manifest JSONL ({id, audio, text, source, duration}) or a suite name: real, tts.")
@click.option("-o", "--out", default="bench-results", show_default=True, type=click.Path(file_okay=False),
              help="Output directory (results.json, results.md, PNG plots).")
@click.option("--max-items", type=int, default=40, show_default=True, help="Utterances, round-robin over sources.")
@click.option("--max-seconds", type=float, default=20.0, show_default=True, help="Skip longer utterances.")
@click.option("-k", "--codebooks", default=None, help="Comma list of codebook counts (default: 1,2,4,...,K).")
@click.option("--asr", default="whisper:base", show_default=True,
              help="none, pocketsphinx, whisper:base, whisper:tiny.en, or a CTranslate2 Whisper directory.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-intrusive", is_flag=True, help="Skip STOI and PESQ.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def bench(tokenizers, data, out, max_items, max_seconds, codebooks, asr, device, no_intrusive, no_plots):
    """Benchmark TOKENIZERS (built-in names or model directories) on the utterances of --data:
    for each bitrate (number of codebooks) token rate, nominal/entropy bitrate, codebook usage,
    mel/STFT distance, SI-SDR, STOI, PESQ, WER/CER of the resynthesis and encode/decode speed."""
    from speechtok.benchmarks.report import to_markdown, write_report
    from speechtok.benchmarks.runner import BenchConfig, run_benchmark
    from speechtok.benchmarks.suite import resolve_data

    ks = tuple(int(k) for k in codebooks.split(",")) if codebooks else None
    cfg = BenchConfig(max_items=max_items, max_seconds=max_seconds, codebooks=ks,
                      asr=None if asr == "none" else asr, device=device, intrusive=not no_intrusive)
    command = "speechtok " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else \
        "speechtok bench " + " ".join(shlex.quote(a) for a in [*tokenizers, "--data", data, "-o", out])
    try:
        manifest, suite = resolve_data(data)
        report = run_benchmark(list(tokenizers), manifest, cfg, command=command)
        if suite is not None:
            report = dataclasses.replace(report, data=f"shared/{suite.manifest} (suite {suite.name!r}: "
                                                       f"{suite.description})")
    except (ValueError, RuntimeError, ImportError, FileNotFoundError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    paths = write_report(report, out, plots=not no_plots)
    click.echo(to_markdown(report))
    click.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
