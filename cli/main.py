"""The ``speechtok`` command line: a thin shell over the Python API (`speechtok.files` & co).

Sub-commands from other parts (units, preprocess, bench, train) are imported only when used,
so ``speechtok --help`` stays fast.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys

import click

# name -> "module:attribute" of a click command/group, imported on first use
LAZY_COMMANDS = {
    "units": "speechtok.cli.units:units",
    "preprocess": "speechtok.cli.preprocess:preprocess",
    "bench": "speechtok.cli.bench:bench",
    "train": "speechtok.cli.train:train",
}


class LazyGroup(click.Group):
    """A click group whose extra commands load lazily (and are hidden if their module is absent)."""

    def _lazy(self, name):
        target = LAZY_COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("speechtok"):
                return None  # that part is not in this build
            raise

    def list_commands(self, ctx):
        names = set(super().list_commands(ctx))
        names |= {n for n, t in LAZY_COMMANDS.items()
                  if importlib.util.find_spec(t.split(":")[0]) is not None}
        return sorted(names)

    def get_command(self, ctx, name):
        return super().get_command(ctx, name) or self._lazy(name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="speechtok")
def main():
    """speechtok: speech to discrete tokens and back."""


def _report(report, verb: str) -> None:
    for path, err in report.failed:
        click.echo(f"error: {err}" if err.startswith(str(path)) else f"error: {path}: {err}", err=True)
    click.echo(f"{verb} {len(report.written)}, skipped {len(report.skipped)} existing, "
               f"failed {len(report.failed)}", err=True)
    if report.failed:
        sys.exit(1)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Output folder (or a .stok file for one input).")
@click.option("--model", default=None, help="Built-in model name or model directory (default: the built-in default).")
@click.option("--codebooks", "num_codebooks", type=int, default=None, help="Keep the first N codebooks (lower bitrate).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Overwrite existing outputs (default: skip them, so reruns resume).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def encode(inputs, output, model, num_codebooks, device, batch_size, force, quiet):
    """Encode audio files or directories to .stok codes files (directory trees are mirrored)."""
    from speechtok.files import encode_files
    from speechtok.registry import load

    tok = load(model, device=device, encoder_only=True)  # nothing is decoded: skip the decoder's weights
    _report(encode_files(inputs, output, tok, num_codebooks=num_codebooks, batch_size=batch_size,
                         force=force, progress=not quiet), "encoded")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Output folder (or an audio file for one input).")
@click.option("--model", default=None, help="Model to decode with (default: the built-in model named in each file).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--format", "audio_format", default="wav", show_default=True, help="Audio file extension.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def decode(inputs, output, model, device, audio_format, force, quiet):
    """Decode .stok codes files or directories back to audio."""
    from pathlib import Path

    from speechtok.files import decode_files
    from speechtok.registry import load

    if len(inputs) == 1 and Path(output).suffix:
        audio_format = Path(output).suffix.lstrip(".")
    tok = load(model, device=device) if model else None
    _report(decode_files(inputs, output, tok, force=force, audio_format=audio_format, progress=not quiet), "decoded")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(files, as_json):
    """Show a codes file's metadata, duration and bitrate."""
    from speechtok.codesfile import CodesFileError
    from speechtok.files import codes_info

    failed = False
    for f in files:
        try:
            meta = codes_info(f)
        except CodesFileError as e:
            click.echo(f"error: {e}", err=True)
            failed = True
            continue
        if as_json:
            click.echo(json.dumps(meta))
        else:
            click.echo(f"{f}\n  model: {meta['model_id']}\n  duration: {meta['seconds']} s, frames {meta['frames']}"
                       f" at {meta['frame_rate']} Hz\n  codebooks: {meta['num_codebooks']} "
                       f"(sizes {meta['codebook_sizes']}, {meta['n_semantic']} semantic)\n"
                       f"  bitrate: {meta['bitrate']} bit/s nominal, {meta['entropy_bitrate']} bit/s entropy\n"
                       f"  source: {meta.get('source')}\n  format: v{meta['format_version']}, "
                       f"speechtok {meta.get('speechtok_version')}")
    if failed:
        sys.exit(1)


@main.command()
def models():
    """List the built-in models (the default first)."""
    from speechtok.registry import DEFAULT_MODEL, models as builtins

    for m in builtins():
        flag = " (default)" if m.name == DEFAULT_MODEL else ""
        click.echo(f"{m.name}{flag}\t{m.description}")


if __name__ == "__main__":
    main()
