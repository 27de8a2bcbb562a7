"""``speechtok preprocess INPUT OUTPUT``: tokenize a dataset into resumable code shards."""
from __future__ import annotations

import math
import sys

import click

# option -> python name; every size must be > 0 (and finite)
_SIZES = {"--shard-items": "shard_items", "--shard-hours": "shard_hours", "--batch-seconds": "batch_seconds",
          "--batch-size": "batch_size", "--workers": "workers", "--ray-workers": "ray_workers",
          "-k": "num_codebooks"}


def _bad_option(values: dict):
    """The first size option that is not > 0 (or not finite), as a one-line problem, else None."""
    for opt, name in _SIZES.items():
        v = values[name]
        if v is not None and not (math.isfinite(v) and v > 0):
            return f"{opt}: must be > 0, got {v}"
    return None


def _failure_line(err: dict) -> str:
    """``error: <file>: <problem>`` for one failed item of ``errors.jsonl`` (file text made safe)."""
    from speechtok.formats import safe_text

    path, msg = str(err.get("path")), str(err.get("error"))
    head, sep, rest = msg.partition(": ")
    if sep and head.isidentifier() and rest.startswith(path + ": "):  # "AudioError: <path>: problem"
        msg = rest
    if msg.startswith(path + ": "):
        msg = msg[len(path) + 2:]
    return f"error: {safe_text(path, 1000)}: {safe_text(msg, 1000)}"


@click.command("preprocess")
@click.argument("inputs", type=click.Path(exists=True))
@click.argument("output", type=click.Path(file_okay=False))
@click.option("-m", "--model", default=None, help="Model name or directory (default: the built-in default).")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda or cuda:1.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: run on Ray Data (pip install 'speechtok[ray]').")
@click.option("--address", default=None, help="Ray cluster address (default: start a local cluster).")
@click.option("--ray-workers", type=int, default=None, help="Ray actors (default: one per CPU of the cluster).")
@click.option("-k", "--num-codebooks", type=int, default=None, help="Keep the first k codebooks.")
@click.option("--shard-items", type=int, default=1000, show_default=True, help="Max items per shard.")
@click.option("--shard-hours", type=float, default=1.0, show_default=True, help="Max hours of audio per shard.")
@click.option("--batch-seconds", type=float, default=200.0, show_default=True,
              help="Max padded seconds of audio per model batch.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Max items per model batch.")
@click.option("--workers", type=int, default=4, show_default=True, help="Audio loading threads.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def preprocess(inputs, output, model, device, engine, address, ray_workers, num_codebooks, shard_items,
               shard_hours, batch_seconds, batch_size, workers, no_progress):
    """Tokenize INPUTS (a directory, a manifest .jsonl, a lhotse cut manifest or a list file) into
    shards under OUTPUT. Rerun the same command to resume after a crash: committed shards are kept,
    the rest is redone. Unreadable files are skipped, listed in OUTPUT/errors.jsonl and make the
    command exit with status 1. A second run on the same OUTPUT while one is running is refused."""
    from speechtok.formats import safe_text
    from speechtok.preprocessing import PreprocessConfig, preprocess as run

    problem = _bad_option(dict(locals()))
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    try:
        cfg = PreprocessConfig(shard_items=shard_items, shard_seconds=shard_hours * 3600,
                               batch_seconds=batch_seconds, max_batch_size=batch_size, num_codebooks=num_codebooks,
                               num_workers=workers)
        res = run(inputs, output, model, device=device, engine=engine, address=address, config=cfg,
                  progress=not no_progress, ray_workers=ray_workers)
    except (ValueError, RuntimeError, ImportError, OSError) as e:
        click.echo(f"error: {safe_text(e, 2000)}", err=True)
        sys.exit(1)
    for why in res.redone:
        click.echo(f"warning: {safe_text(why, 2000)}", err=True)
    for err in res.errors:
        click.echo(_failure_line(err), err=True)
    rate = res.audio_seconds / 3600 / max(res.wall_seconds, 1e-9)
    click.echo(f"{res.num_items - res.num_errors} items in {res.num_shards} shards "
               f"({res.shards_done_before} done before this run), {res.num_errors} errors; "
               f"{res.audio_seconds / 3600:.3f} h of audio in {res.wall_seconds:.1f} s ({rate:.3g} h/s) -> {output}",
               err=True)
    if res.num_errors:
        click.echo(f"see {res.output / 'errors.jsonl'}", err=True)
        sys.exit(1)
