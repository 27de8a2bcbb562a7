"""``speechtok train``: codec training and teacher-feature caching (thin shells over
`speechtok.codec.train` and `speechtok.codec.teachers.cached`).

    speechtok train codec CONFIG --out runs/x [--steps N] [--export models/x] [--set optim.lr=1e-4]
    torchrun --nproc_per_node 4 -m speechtok.cli.main train codec CONFIG --out runs/x
    speechtok train cache-teacher CONFIG --out features/whisper-base
"""
from __future__ import annotations

import json

import click


def _overrides(pairs: tuple[str, ...]) -> dict:
    """``("optim.lr=1e-4", "data.batch_size=4")`` -> nested dict; values parse as JSON when they can."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE (e.g. optim.lr=1e-4)", param_hint="--set")
        key, raw = pair.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _load(config: str, sets: tuple[str, ...]):
    from speechtok.codec.train.config import TrainConfigError, load_train_config

    try:
        return load_train_config(config, _overrides(sets))
    except TrainConfigError as e:
        raise click.ClickException(str(e)) from e


@click.group()
def train():
    """Train speechtok models."""


@train.command("codec")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False),
              help="run directory (checkpoints, metrics.jsonl, tensorboard/); resumed if it has a checkpoint")
@click.option("--steps", type=int, default=None, help="train until this many steps (default: the config's)")
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None,
              help="write a speechtok.load-able model directory at the end")
@click.option("--no-resume", is_flag=True, help="ignore checkpoints in the run directory")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
def codec(config, run_dir, steps, export_dir, no_resume, sets):
    """Train (or resume) a codec from a JSON/YAML CONFIG."""
    from speechtok.codec.train.trainer import train_codec

    cfg = _load(config, sets)
    results = train_codec(cfg, run_dir, steps=steps, export=export_dir, resume=not no_resume)
    if results:
        last = results[-1]
        shown = {k: round(v, 4) for k, v in last.losses.items() if k in ("total", "mel", "distill", "adv", "disc")}
        click.echo(f"step {last.step}: {shown}", err=True)
    if export_dir:
        click.echo(export_dir)


@train.command("cache-teacher")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="feature cache folder")
@click.option("--shard-items", type=int, default=256, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
def cache_teacher(config, out_dir, shard_items, sets):
    """Run the CONFIG's teacher once over its training data; point ``distill.teacher`` at the cache
    with ``{"kind": "cached", "path": OUT}``."""
    from speechtok.codec.teachers import build_teacher
    from speechtok.codec.teachers.cached import precompute_features
    from speechtok.codec.train.data import list_utterances

    cfg = _load(config, sets)
    if cfg.distill.teacher is None:
        raise click.ClickException(f"{config}: no distill.teacher to cache")
    if cfg.distill.teacher.kind == "cached":
        raise click.ClickException(f"{config}: distill.teacher is already a cache")
    items = list_utterances(cfg.data.train, cfg.data.min_seconds, cfg.data.exclude_speakers,
                                     cfg.data.exclude_sources)
    precompute_features(build_teacher(cfg.distill.teacher), items, out_dir, shard_items=shard_items, progress=True)
    click.echo(out_dir)


@train.command("export")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="run directory whose latest checkpoint is exported")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="model directory to write")
@click.option("--name", default=None, help="model name (default: the codec config's)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
def export(config, run_dir, out_dir, name, sets):
    """Write the latest checkpoint of a run as a ``speechtok.load``-able model directory."""
    from speechtok.codec.train.checkpoint import find_checkpoint
    from speechtok.codec.train.trainer import CodecTrainer

    if find_checkpoint(run_dir) is None:
        raise click.ClickException(f"{run_dir}: no checkpoint to export")
    trainer = CodecTrainer(_load(config, sets), run_dir, readonly=True)
    trainer.export(out_dir, name=name)
    click.echo(out_dir)
