"""High-level unit pipeline: make an extractor, dump features to a store, train a unit tokenizer.

    ext = load_extractor("hubert", "hubert_dir", layer=6)                 # speechtok.units.features
    store = extract_to_store("data/manifest.jsonl", ext, "feats/")       # sharded, on disk
    tok = train_unit_tokenizer(store, ext, n_clusters=500)                # faiss, sampled rows
    tok.save("my-units"); speechtok.load("my-units").encode(wav, sample_rate=sr)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from speechtok.formats import check_format, get_field, read_json, safe_text

from .features import load_extractor, restore_extractor
from .features.base import FeatureError, MissingWeightsError
from .featstore import FeatureStore, FeatureWriter
from .kmeans import KMeansConfig, KMeansModel, train_kmeans
from .segment import SegmenterConfig, pool_segments, segment

EXTRACTOR_FILE = "extractor.json"  # beside a feature store's index: how its features were made
EXTRACTOR_FORMAT = "speechtok.extractor"
EXTRACTOR_FORMAT_VERSION = 1


def make_extractor(kind: str, checkpoint: Optional[str] = None, layer: Optional[int] = None,
                   trust_pickle: bool = False, device: str = "cpu", **options):
    """`speechtok.units.features.load_extractor` under its older name (``checkpoint`` = ``source``)."""
    return load_extractor(kind, checkpoint, layer=layer, trust_pickle=trust_pickle, device=device, **options)


def _batches(items: list, max_seconds: float, max_items: int) -> list[list]:
    """Group items sorted by duration into batches of <= max_seconds padded audio."""
    from speechtok.inputs import probe_duration

    durs = [(it.duration if it.duration is not None else (probe_duration(it) or 0.0)) for it in items]
    order = sorted(range(len(items)), key=lambda i: durs[i])
    out, cur = [], []
    for i in order:
        if cur and ((len(cur) + 1) * durs[i] > max_seconds or len(cur) >= max_items):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return [[items[i] for i in b] for b in out]


def _load(item, sample_rate: int) -> torch.Tensor:
    from speechtok.audio import load_audio

    wav, sr = load_audio(item.path, sample_rate=sample_rate)
    if item.start or item.end is not None:
        a = int(round(item.start * sr))
        b = None if item.end is None else int(round(item.end * sr))
        wav = wav[:, a:b]
    return wav[0]


def extract_to_store(source: Any, extractor, out_dir, batch_seconds: Optional[float] = None, max_batch: int = 32,
                     shard_rows: int = 262144, dtype: str = "float32", progress: bool = False) -> FeatureStore:
    """Features of every item of ``source`` (dir, list, manifest; see `speechtok.inputs`) into a
    feature store at ``out_dir``. Items are batched by similar duration (``batch_seconds`` of
    padded audio at most; default 120 s on a GPU, 0 = one file per call on CPU, where batching
    measured no faster, see benchmarks/results/units_features.md); utterance order in the store
    follows that batching."""
    from speechtok.inputs import read_inputs

    if batch_seconds is None:
        dev = getattr(extractor, "device", None)
        batch_seconds = 120.0 if dev is not None and torch.device(dev).type == "cuda" else 0.0

    items = read_inputs(source)
    batches = _batches(items, batch_seconds, max_batch)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="features", unit="utt")
    with FeatureWriter(out_dir, extractor.spec, shard_rows=shard_rows, dtype=dtype) as w:
        write_extractor_file(w, extractor)
        for batch in batches:
            wavs = [_load(it, extractor.sample_rate) for it in batch]
            lengths = torch.tensor([x.shape[0] for x in wavs], dtype=torch.long)
            pad = torch.zeros(len(wavs), 1, int(lengths.max()))
            for i, x in enumerate(wavs):
                pad[i, 0, : x.shape[0]] = x
            feats = extractor.extract(pad, lengths)
            for it, f in zip(batch, feats.unbatch()):
                w.add(it.id, f.float().cpu())
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return w.store


def write_extractor_file(writer: FeatureWriter, extractor) -> Path:
    """Write ``extractor.json`` (the one place it is written): ``{"format", "format_version",
    "extractor": ext.describe()}``. It describes, and never locates, the extractor: no
    checkpoint path and no pickle permission are ever read back from it."""
    import json

    from speechtok.atomic import atomic_write_text

    desc = {"format": EXTRACTOR_FORMAT, "format_version": EXTRACTOR_FORMAT_VERSION,
            "extractor": extractor.describe()}
    path = writer.dir / EXTRACTOR_FILE
    atomic_write_text(path, json.dumps(desc, indent=2, sort_keys=True) + "\n")
    writer.extra_files.append(EXTRACTOR_FILE)
    return path


def _stored_description(store: FeatureStore) -> tuple[Optional[dict], Path]:
    """The extractor description (``{"type", "config", ...}``) in ``store``'s ``extractor.json``
    (None when absent or a pre-format file, whose ``checkpoint``/``trust_pickle`` keys are ignored)."""
    path = store.dir / EXTRACTOR_FILE
    if not path.is_file():
        return None, path
    meta = read_json(path, FeatureError, "extractor description")
    if isinstance(meta, dict) and "format" not in meta and "kind" in meta:  # the CLI's pre-format description
        return None, path
    check_format(meta, path, EXTRACTOR_FORMAT, EXTRACTOR_FORMAT_VERSION, FeatureError, "extractor description")
    return get_field(meta, "extractor", dict, path, FeatureError, "extractor description"), path


def extractor_for_store(store: FeatureStore, checkpoint: Optional[str] = None, trust_pickle: bool = False,
                        device: str = "cpu"):
    """Rebuild the extractor that made ``store``'s features, checked against the store's spec.

    Weightless extractors (MFCC) are restored from the store's description; the others are
    rebuilt from the store's description (its options, e.g. Whisper's ``pad_to_window``) over the
    weights of the caller's ``checkpoint`` (``trust_pickle`` only from the caller), which must be the
    weights the features were made with: a store never names a file to load. A store without a
    description whose spec options differ from the checkpoint's defaults is refused, naming them:
    build that extractor with `load_extractor` and pass it to `train_unit_tokenizer`.
    """
    spec = store.spec
    desc, path = _stored_description(store)
    stored = desc is not None
    if desc is None:  # no (or a pre-format) extractor.json: the spec's options are a weightless config
        desc, path = {"type": spec.kind, "config": spec.options}, store.dir / "index.json"
    if checkpoint is None:
        try:
            ext = restore_extractor(desc, {}, device=device, path=path)
        except MissingWeightsError as e:
            raise FeatureError(f"{store.dir}: these {spec.kind} features (layer {spec.layer}, weights sha256 "
                               f"{spec.checkpoint_hash[:12]}) need the checkpoint they were made with; pass it "
                               "(--checkpoint, and --trust-pickle only for a fairseq .pt you trust)") from e
    else:
        ext = load_extractor(spec.kind, checkpoint, layer=spec.layer if spec.layer >= 0 else None,
                             trust_pickle=trust_pickle, device=device)
        if stored:  # the store's own config (its options) over the checkpoint's weights, checked by restore
            ext = restore_extractor(desc, ext.weights(), device=device, path=path)
    ext.spec.check_compatible(spec, what=f"feature store {store.dir}")
    if ext.spec.options != spec.options:
        diff = sorted(k for k in set(spec.options) | set(ext.spec.options)
                      if spec.options.get(k) != ext.spec.options.get(k))
        raise FeatureError(f"feature store {store.dir} was made with other extractor options "
                           f"({safe_text({k: spec.options.get(k) for k in diff}, 120)}; the checkpoint's defaults: "
                           f"{safe_text({k: ext.spec.options.get(k) for k in diff}, 120)}); build that extractor "
                           "with speechtok.units.features.load_extractor and train in Python")
    return ext


def pooled_features(store: FeatureStore, config: SegmenterConfig, max_utterances: Optional[int] = None):
    """Segment every utterance of ``store`` and mean-pool: ``[N_segments, D]`` float32."""
    out = []
    for i in range(len(store) if max_utterances is None else min(len(store), max_utterances)):
        f = torch.from_numpy(store.utterance(i))
        if f.shape[0]:
            out.append(pool_segments(f, segment(f, store.spec.frame_rate, config)))
    if not out:
        raise FeatureError(f"{store.dir}: no frames to segment")
    return torch.cat(out).numpy()


def train_unit_tokenizer(store: FeatureStore, extractor, n_clusters: int, backend: str = "faiss",
                         sample_rows: Optional[int] = None, dedup: bool = False,
                         segmenter: Optional[SegmenterConfig] = None, seed: int = 0, name: Optional[str] = None,
                         kmeans: Optional[KMeansModel] = None):
    """k-means on ``store`` (frame features, or segment-pooled ones with ``segmenter``) -> `UnitTokenizer`.

    ``name`` (in ``model_id``) defaults to one describing it, e.g. ``mfcc-km500-dedup``."""
    from .tokenizer import UnitTokenizer

    extractor.spec.check_compatible(store.spec, what=f"feature store {store.dir}")
    cfg = KMeansConfig(n_clusters=n_clusters, backend=backend, sample_rows=sample_rows, seed=seed)
    if kmeans is None:
        data = store if segmenter is None else pooled_features(store, segmenter)
        kmeans = train_kmeans(data, cfg, spec=store.spec)
    return UnitTokenizer(extractor, kmeans, dedup=dedup, segmenter=segmenter, name=name)
