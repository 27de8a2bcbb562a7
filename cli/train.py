"""``speechtok train``: codec training and teacher-feature caching (thin shells over
`speechtok.codec.train` and `speechtok.codec.teachers.cached`).

    speechtok train codec CONFIG --data train.jsonl --out runs/x [--steps N] [--export models/x] [--set optim.lr=1e-4]
    torchrun --nproc_per_node 4 -m speechtok.cli.main train codec CONFIG --data train.jsonl --out runs/x
    speechtok train cache-teacher CONFIG --data train.jsonl --out features/whisper-base

``--data`` (repeatable: manifests or audio folders) replaces the config's ``data.train``; the
shipped configs name none.
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


def _load(config: str, sets: tuple[str, ...], data: tuple[str, ...] = ()):
    """The validated config with ``--set`` and ``--data`` applied and a ``whisper:NAME`` teacher
    path resolved to the installed weights."""
    from speechtok.codec.train.config import TrainConfigError, load_train_config, resolve_teacher_path, \
        with_train_data

    try:
        return resolve_teacher_path(with_train_data(load_train_config(config, _overrides(sets)), data, config))
    except TrainConfigError as e:
        raise click.ClickException(str(e)) from e


_data_option = click.option(
    "--data", "data", multiple=True, type=click.Path(exists=True),
    help="training manifest (.jsonl) or audio folder, repeatable; replaces the config's data.train")


@click.group()
def train():
    """Train speechtok models."""


@train.command("codec")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False),
              help="run directory (checkpoints, metrics.jsonl, tensorboard/); resumed if it has a checkpoint")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="train until this many steps (default: the config's)")
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None,
              help="write a speechtok.load-able model directory at the end")
@click.option("--no-resume", is_flag=True, help="ignore checkpoints in the run directory")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
@_data_option
def codec(config, run_dir, steps, export_dir, no_resume, sets, data):
    """Train (or resume) a codec from a JSON/YAML CONFIG on --data."""
    from speechtok.codec.train.data import DataError
    from speechtok.codec.train.trainer import train_codec

    cfg = _load(config, sets, data)
    try:
        results = train_codec(cfg, run_dir, steps=steps, export=export_dir, resume=not no_resume)
    except DataError as e:
        raise click.ClickException(str(e)) from e
    if results:
        last = results[-1]
        shown = {k: round(v, 4) for k, v in last.losses.items() if k in ("total", "mel", "distill", "adv", "disc")}
        click.echo(f"step {last.step}: {shown}", err=True)
    if export_dir:
        click.echo(export_dir)


@train.command("cache-teacher")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="feature cache folder")
@click.option("--shard-items", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
@_data_option
def cache_teacher(config, out_dir, shard_items, sets, data):
    """Run the CONFIG's teacher once over its training data; point ``distill.teacher`` at the cache
    with ``{"kind": "cached", "path": OUT}``."""
    from speechtok.codec.teachers import build_teacher
    from speechtok.codec.teachers.cached import precompute_features
    from speechtok.codec.train.data import DataError, list_utterances

    cfg = _load(config, sets, data)
    if cfg.distill.teacher is None:
        raise click.ClickException(f"{config}: no distill.teacher to cache")
    if cfg.distill.teacher.kind == "cached":
        raise click.ClickException(f"{config}: distill.teacher is already a cache")
    try:
        items = list_utterances(cfg.data.train, cfg.data.min_seconds, cfg.data.exclude_speakers,
                                cfg.data.exclude_sources)
    except DataError as e:
        raise click.ClickException(str(e)) from e
    from speechtok.codec.train.ddp import pick_device

    teacher = build_teacher(cfg.distill.teacher, device=pick_device(cfg.device))
    precompute_features(teacher, items, out_dir, shard_items=shard_items, progress=True)
    click.echo(out_dir)


@train.command("export")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="run directory whose latest checkpoint is exported")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="model directory to write")
@click.option("--name", default=None, help="model name (default: the codec config's)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
@_data_option
def export(config, run_dir, out_dir, name, sets, data):
    """Write the latest checkpoint of a run as a ``speechtok.load``-able model directory."""
    from speechtok.codec.train.checkpoint import find_checkpoint
    from speechtok.codec.train.trainer import CodecTrainer

    if find_checkpoint(run_dir) is None:
        raise click.ClickException(f"{run_dir}: no checkpoint to export")
    trainer = CodecTrainer(_load(config, sets, data), run_dir, readonly=True)
    trainer.export(out_dir, name=name)
    click.echo(out_dir)
