"""``speechtok units``: features -> k-means -> unit tokenizer; BPE over codes files.

    speechtok units features data/manifest.jsonl feats/ --kind hubert --checkpoint hubert_dir --layer 6
    speechtok units train-kmeans feats/ my-units/ --k 500 [--checkpoint hubert_dir]
    speechtok units train-bpe codes/*.safetensors my-bpe/ --vocab-size 4096 --dedup
    speechtok units import-kmeans km.bin my-km.safetensors --trust-pickle
    speechtok units train-vocoder my-units/ vocoder.json --data manifest.jsonl --run-dir runs/voc --export my-units-voc/

Each command is a few lines over `speechtok.units.api`, `speechtok.units.kmeans`, `speechtok.bpe` and
`speechtok.units.vocoder_train`. Errors are one line naming the file or option; nothing a file says
turns on pickle loading or names a checkpoint to load (``--checkpoint``/``--trust-pickle`` only).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from speechtok.formats import MAX_CODEBOOK_SIZE
from speechtok.units.features import EXTRACTORS  # the kind table only: no torch


def _friendly(fn):
    """Show speechtok's input errors (which name the file and the problem) as one safe line."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from speechtok.audio import AudioError
        from speechtok.codes import CodesError
        from speechtok.formats import safe_text
        from speechtok.inputs import InputError
        from speechtok.registry import ModelLoadError
        from speechtok.codec.train.config import TrainConfigError
        from speechtok.units.features.base import FeatureError

        try:
            return fn(*args, **kwargs)
        except (FeatureError, CodesError, ModelLoadError, TrainConfigError, InputError, AudioError) as e:
            raise click.ClickException(safe_text(e, 1000)) from e
    return wrapper


def _device(ctx, param, value: str) -> str:
    """``--device``: a torch device string that exists on this machine."""
    from speechtok.cli.main import device_problem

    problem = device_problem(value)
    if problem:
        raise click.BadParameter(f"{value!r}: {problem}")
    return value


def _same(a, b) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(path, parent) -> bool:
    """``path`` is ``parent`` or lies under it (both resolved)."""
    p, q = os.path.realpath(path), os.path.realpath(parent)
    return p == q or p.startswith(q.rstrip(os.sep) + os.sep)


def _check_model_out(out: str, inputs: dict, hint: str = "OUT") -> None:
    """A model directory OUT replaces what is there: refuse an input, a folder holding an input,
    and an existing path that is not a speechtok model directory."""
    for opt, path in inputs.items():
        if path is not None and _inside(path, out):
            raise click.BadParameter(f"{out} is (or holds) the input {path} ({opt}); pick another output",
                                     param_hint=hint)
    if os.path.lexists(out) and not (Path(out) / "config.json").is_file():
        raise click.BadParameter(f"{out} exists and is not a speechtok model directory; pick a new one",
                                 param_hint=hint)


def _parse_options(items) -> dict:
    """``KEY=VALUE`` strings -> a dict; VALUE read as JSON (true, 3, 0.5, "x") or else kept as text."""
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--option")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


_DEVICE = click.option("--device", default="cpu", show_default=True, callback=_device)


@click.group()
def units():
    """SSL/MFCC/Whisper features, k-means units, syllable units and BPE."""


@units.command("features")
@click.argument("source")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(list(EXTRACTORS)), default="mfcc", show_default=True,
              help="feature extractor (speechtok.units.features.EXTRACTORS)")
@click.option("--checkpoint", default=None,
              help="HF directory / fairseq .pt (hubert, wavlm, wav2vec2); whisper: CTranslate2 / HF "
                   "directory, OpenAI .pt, or whisper:NAME (tiny.en, base: the installed weights)")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="extractor option (repeatable), e.g. pad_to_window=false (whisper), normalize_audio=true")
@click.option("--layer", type=click.IntRange(0, 1024), default=None,
              help="transformer block L (1-based; 0 = pre-transformer)")
@click.option("--trust-pickle", is_flag=True, help="allow loading a fairseq .pt pickle (can run code)")
@_DEVICE
@click.option("--batch-seconds", type=click.FloatRange(0, 24 * 3600), default=None,
              help="padded audio per batch (default: 120 on GPU, one file per call on CPU)")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@_friendly
def features_cmd(source, out_dir, kind, checkpoint, layer, trust_pickle, options, device, batch_seconds, dtype):
    """Extract features of SOURCE (dir, list or manifest) into a sharded store OUT_DIR (with the
    extractor.json that `train-kmeans` reads)."""
    from speechtok.units.api import extract_to_store
    from speechtok.units.features import load_extractor

    if _same(source, out_dir):
        raise click.BadParameter(f"{out_dir} is the input; pick another output", param_hint="OUT_DIR")
    if checkpoint is not None and not checkpoint.startswith("whisper:") and not os.path.exists(checkpoint):
        raise click.BadParameter(f"{checkpoint}: no such file or directory", param_hint="--checkpoint")
    ext = load_extractor(kind, checkpoint, layer=layer, trust_pickle=trust_pickle, device=device,
                         **_parse_options(options))
    store = extract_to_store(source, ext, out_dir, batch_seconds=batch_seconds, dtype=dtype, progress=True)
    click.echo(f"{out_dir}: {len(store)} utterances, {store.num_rows} frames of {store.dim}-d "
               f"{store.spec.kind} features at {store.spec.frame_rate:g} Hz")


@units.command("train-kmeans")
@click.argument("features_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--k", "-k", "n_clusters", type=click.IntRange(1, MAX_CODEBOOK_SIZE), default=500, show_default=True)
@click.option("--backend", type=click.Choice(["faiss", "sklearn"]), default="faiss", show_default=True)
@click.option("--sample-rows", type=click.IntRange(1), default=None, help="rows drawn for training (default 256*K)")
@click.option("--dedup", is_flag=True, help="the tokenizer merges repeated units (durations kept)")
@click.option("--syllables", type=click.Choice(["mincut", "greedy"]), default=None,
              help="pool features over syllable-like segments before k-means")
@click.option("--target-rate", type=click.FloatRange(0, 1000, min_open=True), default=5.0, show_default=True,
              help="segments per second")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--centroids-only", is_flag=True, help="write only the k-means .safetensors file to OUT")
@click.option("--checkpoint", default=None,
              help="hubert/wavlm/whisper stores: the checkpoint the features were made with (checked; "
                   "whisper:NAME for the installed Whisper weights)")
@click.option("--trust-pickle", is_flag=True, help="allow loading a fairseq .pt --checkpoint (can run code)")
@click.option("--name", default=None, help="model name in model_id (default: OUT's directory name)")
@_DEVICE
@_friendly
def train_kmeans_cmd(features_dir, out, n_clusters, backend, sample_rows, dedup, syllables, target_rate, seed,
                     centroids_only, checkpoint, trust_pickle, name, device):
    """Train k-means on a feature store; write a unit tokenizer directory OUT."""
    from speechtok.formats import safe_text
    from speechtok.units.api import extractor_for_store, pooled_features, train_unit_tokenizer
    from speechtok.units.featstore import FeatureStore
    from speechtok.units.kmeans import KMeansConfig, train_kmeans
    from speechtok.units.segment import SegmenterConfig
    from speechtok.units.tokenizer import check_name, sanitize_name

    if centroids_only:
        if os.path.isdir(out) or any(_same(out, Path(features_dir) / f) for f in os.listdir(features_dir)):
            raise click.BadParameter(f"{out} is a directory or a file of the feature store; pick a new file",
                                     param_hint="OUT")
    else:
        _check_model_out(out, {"FEATURES_DIR": features_dir, "--checkpoint": checkpoint})
        name = check_name(name, "--name") if name is not None else \
            sanitize_name(Path(os.path.abspath(out)).name, fallback="units-user")
    if checkpoint is not None and not checkpoint.startswith("whisper:") and not os.path.exists(checkpoint):
        raise click.BadParameter(f"{checkpoint}: no such file or directory", param_hint="--checkpoint")
    store = FeatureStore(features_dir)
    seg = SegmenterConfig(syllables, target_rate) if syllables else None
    cfg = KMeansConfig(n_clusters=n_clusters, backend=backend, sample_rows=sample_rows, seed=seed)
    # the extractor first (fail before training): from the store's spec + the user's own checkpoint
    ext = None if centroids_only else extractor_for_store(store, checkpoint, trust_pickle=trust_pickle, device=device)
    km = train_kmeans(store if seg is None else pooled_features(store, seg), cfg, spec=store.spec)
    if centroids_only:
        km.save(out)
        click.echo(f"{out}: {km.n_clusters} centroids, training inertia {km.info['train_inertia']:.4g}")
        return
    tok = train_unit_tokenizer(store, ext, n_clusters, dedup=dedup, segmenter=seg, kmeans=km, name=name)
    tok.save(out)
    click.echo(f"{out}: {safe_text(tok.model_id)}, K={n_clusters}, {tok.frame_rate:g} Hz frames")


@units.command("train-bpe")
@click.argument("codes_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--vocab-size", type=click.IntRange(1, MAX_CODEBOOK_SIZE), default=4096, show_default=True)
@click.option("--min-frequency", type=click.IntRange(0), default=2, show_default=True)
@click.option("--dedup", is_flag=True, help="dedup the codes before learning merges")
@click.option("--tokenizer", "tok_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="the unit tokenizer that made the codes: OUT_DIR becomes that tokenizer + this BPE stage")
@_friendly
def train_bpe_cmd(codes_files, out_dir, vocab_size, min_frequency, dedup, tok_dir):
    """Learn BPE over the tokens of CODES_FILES; write OUT_DIR (tokenizer.json + bpe.json, or a
    complete unit tokenizer directory with --tokenizer)."""
    from speechtok.bpe import UnitBPE
    from speechtok.codesfile import load_codes
    from speechtok.dedup import dedup as dedup_fn
    from speechtok.formats import safe_text

    for f in codes_files:
        if _inside(f, out_dir):
            raise click.BadParameter(f"{out_dir} holds the input {f}; pick another output", param_hint="OUT_DIR")
    tok = None
    if tok_dir:
        import speechtok

        _check_model_out(out_dir, {"--tokenizer": tok_dir}, "OUT_DIR")
        tok = speechtok.load(tok_dir)
        if not hasattr(tok, "set_bpe"):
            raise click.BadParameter(f"{tok_dir} is not a unit tokenizer", param_hint="--tokenizer")
    batches = [load_codes(p) for p in codes_files]
    if dedup:
        batches = [dedup_fn(c) for c in batches]
    if tok is not None and getattr(tok, "dedup", False) != dedup and \
            not all(c.durations is not None for c in batches):
        raise click.ClickException("pass --dedup iff the tokenizer dedups (BPE must see what it emits)")
    bpe = UnitBPE.train(batches, vocab_size=vocab_size, min_frequency=min_frequency)
    if tok is not None:
        tok.set_bpe(bpe)
        tok.save(out_dir)
        click.echo(f"{out_dir}: unit tokenizer + BPE, {safe_text(tok.model_id)}")
        return
    bpe.save(out_dir)
    click.echo(f"{out_dir}: vocab {bpe.vocab_size}, {safe_text(bpe.model_id)}")


@units.command("import-kmeans")
@click.argument("pickle_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--trust-pickle", is_flag=True, help="required: the file is a pickle and can run code")
@_friendly
def import_kmeans_cmd(pickle_file, out, trust_pickle):
    """Convert a fairseq/textlesslib k-means pickle to the safe .safetensors format (once)."""
    from speechtok.units.kmeans import import_kmeans_pickle

    if _same(out, pickle_file):
        raise click.BadParameter(f"{out} is the input pickle; pick another output", param_hint="OUT")
    km = import_kmeans_pickle(pickle_file, trust_pickle=trust_pickle)
    km.save(out)
    click.echo(f"{out}: {km.n_clusters} x {km.dim} centroids")


@units.command("train-vocoder")
@click.argument("tokenizer_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False),
              help="checkpoints + logs; an existing run resumes exactly")
@click.option("--export", "export_dir", default=None, type=click.Path(file_okay=False),
              help="write TOKENIZER_DIR + the trained vocoder here (speechtok.load-able, decodes)")
@click.option("--steps", type=click.IntRange(0), default=None,
              help="train until this total step count (default: the config's; 0 on an existing run: just export)")
@click.option("--data", multiple=True, type=click.Path(exists=True),
              help="training manifest (.jsonl) or audio folder, repeatable; replaces the config's data.train")
@_friendly
def train_vocoder_cmd(tokenizer_dir, config, run_dir, export_dir, steps, data):
    """Train a unit vocoder for the unit tokenizer TOKENIZER_DIR with training CONFIG (the codec
    training schema; `model` holds the vocoder sizes, e.g. units/configs/vocoder-mfcc-16k-cpu.json)."""
    from speechtok.units.vocoder_train import train_vocoder

    for opt, path in (("TOKENIZER_DIR", tokenizer_dir), ("CONFIG", config)):
        if _inside(path, run_dir):
            raise click.BadParameter(f"{run_dir} is (or holds) the input {path}", param_hint="--run-dir")
    if export_dir is not None:
        _check_model_out(export_dir, {"TOKENIZER_DIR": tokenizer_dir, "CONFIG": config, "--run-dir": run_dir},
                         "--export")
    run = train_vocoder(tokenizer_dir, config, run_dir, steps=steps, export_to=export_dir, data=data)
    last = run.results[-1] if run.results else None
    if last is not None:
        click.echo(f"step {last.step}: mel {last.losses.get('mel', float('nan')):.4f}")
    if run.export_dir is not None:
        click.echo(f"{run.export_dir}: unit tokenizer + vocoder (speechtok.load it and decode)")
