"""``speechtok units``: features -> k-means -> unit tokenizer; BPE over codes files.

    speechtok units features data/manifest.jsonl feats/ --kind hubert --checkpoint hubert_dir --layer 6
    speechtok units train-kmeans feats/ my-units/ --k 500
    speechtok units train-bpe codes/*.safetensors my-bpe/ --vocab-size 4096 --dedup
    speechtok units import-kmeans km.bin my-km.safetensors --trust-pickle
    speechtok units train-vocoder my-units/ vocoder.json --run-dir runs/voc --export my-units-voc/

Each command is a few lines over `speechtok.units.api`, `speechtok.units.kmeans`, `speechtok.bpe` and
`speechtok.units.vocoder_train`.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click

EXTRACTOR_FILE = "extractor.json"


def _friendly(fn):
    """Show speechtok's input errors (which name the file and the problem) without a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from speechtok.codes import CodesError
        from speechtok.registry import ModelLoadError
        from speechtok.codec.train.config import TrainConfigError
        from speechtok.units.features.base import FeatureError

        try:
            return fn(*args, **kwargs)
        except (FeatureError, CodesError, ModelLoadError, TrainConfigError) as e:
            raise click.ClickException(str(e)) from e
    return wrapper


@click.group()
def units():
    """SSL/MFCC/Whisper features, k-means units, syllable units and BPE."""


@units.command("features")
@click.argument("source")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(["mfcc", "logmel", "hubert", "wavlm", "whisper"]), default="mfcc",
              show_default=True)
@click.option("--checkpoint", default=None, help="HF directory / fairseq .pt (hubert, wavlm) or CTranslate2 dir (whisper)")
@click.option("--layer", type=int, default=None, help="transformer block L (1-based; 0 = pre-transformer)")
@click.option("--trust-pickle", is_flag=True, help="allow loading a fairseq .pt pickle (can run code)")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-seconds", type=float, default=None,
              help="padded audio per batch (default: 120 on GPU, one file per call on CPU)")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@_friendly
def features_cmd(source, out_dir, kind, checkpoint, layer, trust_pickle, device, batch_seconds, dtype):
    """Extract features of SOURCE (dir, list or manifest) into a sharded store OUT_DIR."""
    from speechtok.atomic import atomic_write_text
    from speechtok.units.api import extract_to_store, make_extractor

    ext = make_extractor(kind, checkpoint=checkpoint, layer=layer, trust_pickle=trust_pickle, device=device)
    store = extract_to_store(source, ext, out_dir, batch_seconds=batch_seconds, dtype=dtype, progress=True)
    desc = {"kind": kind, "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None, "layer": layer,
            "trust_pickle": bool(trust_pickle)}
    atomic_write_text(Path(out_dir) / EXTRACTOR_FILE, json.dumps(desc, indent=2) + "\n")
    click.echo(f"{out_dir}: {len(store)} utterances, {store.num_rows} frames of {store.dim}-d "
               f"{store.spec.kind} features at {store.spec.frame_rate:g} Hz")


@units.command("train-kmeans")
@click.argument("features_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--k", "n_clusters", type=int, default=500, show_default=True)
@click.option("--backend", type=click.Choice(["faiss", "sklearn"]), default="faiss", show_default=True)
@click.option("--sample-rows", type=int, default=None, help="rows drawn for training (default 256*K)")
@click.option("--dedup", is_flag=True, help="the tokenizer merges repeated units (durations kept)")
@click.option("--syllables", type=click.Choice(["mincut", "greedy"]), default=None,
              help="pool features over syllable-like segments before k-means")
@click.option("--target-rate", type=float, default=5.0, show_default=True, help="segments per second")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--centroids-only", is_flag=True, help="write only the k-means .safetensors file to OUT")
@click.option("--device", default="cpu", show_default=True)
@_friendly
def train_kmeans_cmd(features_dir, out, n_clusters, backend, sample_rows, dedup, syllables, target_rate, seed,
                     centroids_only, device):
    """Train k-means on a feature store; write a unit tokenizer directory OUT."""
    from speechtok.units.api import make_extractor, pooled_features, train_unit_tokenizer
    from speechtok.units.featstore import FeatureStore
    from speechtok.units.kmeans import KMeansConfig, train_kmeans
    from speechtok.units.segment import SegmenterConfig

    store = FeatureStore(features_dir)
    seg = SegmenterConfig(syllables, target_rate) if syllables else None
    cfg = KMeansConfig(n_clusters=n_clusters, backend=backend, sample_rows=sample_rows, seed=seed)
    km = train_kmeans(store if seg is None else pooled_features(store, seg), cfg, spec=store.spec)
    if centroids_only:
        km.save(out)
        click.echo(f"{out}: {km.n_clusters} centroids, training inertia {km.info['train_inertia']:.4g}")
        return
    desc_path = Path(features_dir) / EXTRACTOR_FILE
    if not desc_path.is_file():
        raise click.ClickException(f"{desc_path} missing: cannot rebuild the extractor (use --centroids-only)")
    desc = json.loads(desc_path.read_text())
    ext = make_extractor(desc["kind"], checkpoint=desc.get("checkpoint"), layer=desc.get("layer"),
                         trust_pickle=desc.get("trust_pickle", False), device=device)
    tok = train_unit_tokenizer(store, ext, n_clusters, dedup=dedup, segmenter=seg, kmeans=km)
    tok.save(out)
    click.echo(f"{out}: {tok.model_id}, K={n_clusters}, {tok.frame_rate:g} Hz frames")


@units.command("train-bpe")
@click.argument("codes_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--vocab-size", type=int, default=4096, show_default=True)
@click.option("--min-frequency", type=int, default=2, show_default=True)
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

    batches = [load_codes(p) for p in codes_files]
    if dedup:
        batches = [dedup_fn(c) for c in batches]
    bpe = UnitBPE.train(batches, vocab_size=vocab_size, min_frequency=min_frequency)
    if tok_dir:
        import speechtok

        tok = speechtok.load(tok_dir)
        if getattr(tok, "dedup", False) != dedup and not all(c.durations is not None for c in batches):
            raise click.ClickException("pass --dedup iff the tokenizer dedups (BPE must see what it emits)")
        tok.set_bpe(bpe)
        tok.save(out_dir)
        click.echo(f"{out_dir}: unit tokenizer + BPE, {tok.model_id}")
        return
    bpe.save(out_dir)
    click.echo(f"{out_dir}: vocab {bpe.vocab_size}, {bpe.model_id}")


@units.command("import-kmeans")
@click.argument("pickle_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path())
@click.option("--trust-pickle", is_flag=True, help="required: the file is a pickle and can run code")
@_friendly
def import_kmeans_cmd(pickle_file, out, trust_pickle):
    """Convert a fairseq/textlesslib k-means pickle to the safe .safetensors format (once)."""
    from speechtok.units.kmeans import import_kmeans_pickle

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
@click.option("--steps", type=int, default=None, help="train until this total step count (default: the config's; 0 on an existing run: just export)")
@_friendly
def train_vocoder_cmd(tokenizer_dir, config, run_dir, export_dir, steps):
    """Train a unit vocoder for the unit tokenizer TOKENIZER_DIR with training CONFIG (the codec
    training schema; `model` holds the vocoder sizes, e.g. units/configs/vocoder-mfcc-16k-cpu.json)."""
    from speechtok.units.vocoder_train import train_vocoder

    run = train_vocoder(tokenizer_dir, config, run_dir, steps=steps, export_to=export_dir)
    last = run.results[-1] if run.results else None
    if last is not None:
        click.echo(f"step {last.step}: mel {last.losses.get('mel', float('nan')):.4f}")
    if run.export_dir is not None:
        click.echo(f"{run.export_dir}: unit tokenizer + vocoder (speechtok.load it and decode)")
