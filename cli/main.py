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
    "export": "speechtok.cli.export:export",
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


def _say(text) -> str:
    """File-supplied or user-supplied text made safe for the terminal (one line, no control sequences)."""
    from speechtok.formats import safe_text

    return safe_text(text, limit=1000)


def _fail(message) -> None:
    """One-line error, exit status 2 (misuse: nothing was written)."""
    click.echo(f"error: {_say(message)}", err=True)
    sys.exit(2)


def _report(report, verb: str) -> None:
    for path, reason in report.redone:
        click.echo(_say(f"note: {path}: {reason}; redoing it"), err=True)
    for path, err in report.failed:
        click.echo(_say(f"error: {err}" if err.startswith(str(path)) else f"error: {path}: {err}"), err=True)
    redone = f", redone {len(report.redone)} stale" if report.redone else ""
    click.echo(f"{verb} {len(report.written)}, skipped {len(report.skipped)} existing{redone}, "
               f"failed {len(report.failed)}", err=True)
    if report.failed:
        sys.exit(1)


def device_problem(device: str):
    """Why ``device`` cannot be used on this machine (not a torch device, no such GPU), or None."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        return f"not a torch device ({e})"
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        return f"no such CUDA GPU on this machine ({torch.cuda.device_count()} visible); use --device cpu"
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available on this machine; use --device cpu"
    return None


def _check_device(device: str) -> None:
    problem = device_problem(device)
    if problem:
        _fail(f"--device {device}: {problem}")


def _load(model, device, **kw):
    from speechtok.registry import ModelLoadError, load

    try:
        return load(model, device=device, **kw)
    except (ModelLoadError, OSError) as e:
        _fail(f"--model {model}: {e}" if model and not str(e).startswith(str(model)) else e)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Output folder (or a .stok file for one input).")
@click.option("--model", default=None, help="Built-in model name or model directory (default: the built-in default).")
@click.option("--codebooks", "num_codebooks", type=int, default=None,
              help="Keep the first N codebooks (lower bitrate); 1 <= N <= the model's.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", default=8, show_default=True, type=int, help="Files encoded together (>= 1).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs (default: keep the valid ones made with the "
                                            "same model and settings, so reruns resume).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def encode(inputs, output, model, num_codebooks, device, batch_size, force, quiet):
    """Encode audio files or directories to .stok codes files (directory trees are mirrored)."""
    from speechtok.audio import is_audio_file, is_unsupported_audio
    from speechtok.codesfile import EXTENSION
    from speechtok.files import FilesError, encode_files, plan_outputs

    if batch_size < 1:
        _fail(f"--batch-size {batch_size}: must be >= 1")
    if num_codebooks is not None and num_codebooks < 1:
        _fail(f"--codebooks {num_codebooks}: must be >= 1")
    _check_device(device)
    try:
        plan_outputs(inputs, output, lambda p: is_audio_file(p) or is_unsupported_audio(p), EXTENSION)
    except FilesError as e:
        _fail(e)
    tok = _load(model, device, encoder_only=True)  # nothing is decoded: skip the decoder's weights
    if num_codebooks is not None and num_codebooks > tok.num_codebooks:
        _fail(f"--codebooks {num_codebooks}: {tok.model_id} has {tok.num_codebooks} codebooks")
    try:
        report = encode_files(inputs, output, tok, num_codebooks=num_codebooks, batch_size=batch_size,
                              force=force, progress=not quiet)
    except FilesError as e:
        _fail(e)
    _report(report, "encoded")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Output folder (or an audio file for one input).")
@click.option("--model", default=None, help="Model to decode with (default: the built-in model named in each file).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--format", "audio_format", default="wav", show_default=True, help="Audio file extension.")
@click.option("--match-source", is_flag=True,
              help="Write each file at the sample rate and channel count of the audio it was encoded from "
                   "(recorded in the codes file; default: the model's).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def decode(inputs, output, model, device, audio_format, match_source, force, quiet):
    """Decode .stok codes files or directories back to audio."""
    from pathlib import Path

    from speechtok.codesfile import EXTENSION
    from speechtok.files import FilesError, check_audio_format, decode_files, plan_outputs

    _check_device(device)
    from_output = len(inputs) == 1 and not Path(inputs[0]).is_dir() and bool(Path(output).suffix)
    if from_output:
        audio_format = Path(output).suffix.lstrip(".")
    try:
        plan_outputs(inputs, output, lambda p: p.suffix == EXTENSION, "." + audio_format.lstrip(".").lower())
        fmt = check_audio_format(audio_format)
    except FilesError as e:
        _fail(f"-o {output}: .{audio_format} is not an audio format this build writes" if from_output and
              str(e).startswith("--format") else e)
    tok = _load(model, device) if model else None
    try:
        report = decode_files(inputs, output, tok, force=force, audio_format=fmt, progress=not quiet,
                              match_source=match_source)
    except FilesError as e:
        _fail(e)
    _report(report, "decoded")


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
            click.echo(f"error: {_say(e)}", err=True)
            failed = True
            continue
        if as_json:
            click.echo(json.dumps(meta))  # ensure_ascii: control characters come out escaped
            continue
        src = "" if meta.get("source_sample_rate") is None else \
            f" ({meta['source_sample_rate']} Hz, {meta.get('source_channels')} ch)"
        click.echo(f"{_say(f)}\n  model: {_say(meta['model_id'])}\n  duration: {meta['seconds']} s, "
                   f"frames {_say(meta['frames'])} at {meta['frame_rate']} Hz\n  codebooks: {meta['num_codebooks']} "
                   f"(sizes {_say(meta['codebook_sizes'])}, {meta['n_semantic']} semantic)\n"
                   f"  bitrate: {meta['bitrate']} bit/s nominal, {meta['entropy_bitrate']} bit/s entropy\n"
                   f"  source: {_say(meta.get('source'))}{src}\n  format: v{meta['format_version']}, "
                   f"speechtok {_say(meta.get('speechtok_version'))}")
    if failed:
        sys.exit(1)


@main.command()
def models():
    """List the built-in models (the default first)."""
    from speechtok.registry import DEFAULT_MODEL, DEFAULT_UNITS_MODEL, UNITS_ALIAS, models as builtins

    for m in builtins():
        flag = " (default)" if m.name == DEFAULT_MODEL else f" (units default: {UNITS_ALIAS!r})" \
            if m.name == DEFAULT_UNITS_MODEL else ""
        click.echo(f"{m.name}{flag}\t{m.description}")


if __name__ == "__main__":
    main()
