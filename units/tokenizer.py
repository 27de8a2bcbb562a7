"""`UnitTokenizer`: features -> (optional syllable pooling) -> k-means units -> (optional dedup) as `Codes`.

Frame units: ``codes [B, 1, T]`` at the feature rate (50 Hz HuBERT/WavLM/Whisper, 100 Hz MFCC),
``codebook_sizes = (K,)``. With ``dedup=True`` repeated units merge and ``durations`` count frames.
With a `UnitBPE` (``bpe``, trained on this tokenizer's own units, deduped or not) the output is
the BPE tokens (``codebook_sizes = (vocab,)``, ``durations`` in feature frames) and ``model_id`` is
the BPE's. Syllable units (``segmenter`` set): each segment's mean feature is assigned to the (pooled-feature)
centroids; ``codes [B, 1, N]`` with ``durations`` = segment lengths in feature frames, ``N`` ~
``target_rate`` per second. ``model_id`` is ``name@<sha256 of centroids + feature spec + options>``.

A trained tokenizer is one directory (`speechtok.registry.save_model_dir`, kind ``"units"``):
``config.json`` (feature extractor description, `FeatureSpec`, options) + ``model.safetensors``
(``centroids [K, D]`` and, for HuBERT/WavLM, ``extractor.*`` torchaudio weights); a BPE stage is
stored inside ``config.json`` (its HF tokenizer JSON + metadata). There is no
``decode`` until a unit vocoder exists.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from speechtok.codes import Codes
from speechtok.protocol import BaseTokenizer

from .features import build_extractor, extractor_config, extractor_state
from .features.base import Features, FeatureError, FeatureSpec
from .kmeans import KMeansModel
from .segment import SegmenterConfig, pool_segments, segment

CONFIG_VERSION = 1


class UnitTokenizer(BaseTokenizer):
    """Speech -> discrete units through the `Codes` interface (see module doc).

    Args:
        extractor: a `FeatureExtractor` (MFCC, SSL, Whisper).
        kmeans: centroids trained on this extractor's features (pooled ones if ``segmenter``).
        dedup: merge repeated units (``durations`` set).
        segmenter: syllable segmentation config (None: frame units).
        name: model name used in ``model_id``.
        bpe: optional `UnitBPE` applied last (trained on this tokenizer's units).
    """

    def __init__(self, extractor, kmeans: KMeansModel, dedup: bool = False,
                 segmenter: Optional[SegmenterConfig] = None, name: str = "units", bpe=None):
        super().__init__()
        spec: FeatureSpec = extractor.spec
        if kmeans.dim != spec.dim:
            raise FeatureError(f"k-means has {kmeans.dim}-d centroids but the extractor gives {spec.dim}-d features")
        if kmeans.spec is not None:
            spec.check_compatible(kmeans.spec, what="k-means centroids")
        self.extractor = extractor  # an nn.Module extractor (SSL) registers as a submodule: .to(device) moves it
        self.register_buffer("centroids", kmeans.centroids.float().clone())
        self.kmeans_info = dict(kmeans.info)
        self.spec = spec
        self.dedup = bool(dedup)
        self.segmenter = segmenter
        self.name = name
        self.sample_rate = int(spec.sample_rate)
        self.channels = 1
        self.frame_rate = float(spec.frame_rate)
        self.codebook_sizes = (kmeans.n_clusters,)
        self.n_semantic = 1
        opts = {"dedup": self.dedup, "segmenter": asdict(segmenter) if segmenter else None}
        h = hashlib.sha256(KMeansModel(self.centroids.cpu(), spec).hash().encode())
        h.update(json.dumps(opts, sort_keys=True).encode())
        self.weights_hash = h.hexdigest()
        self.units_id = f"{self.name}@{self.weights_hash[:12]}"
        self.units_codebook_sizes = self.codebook_sizes
        self.bpe = None
        if bpe is not None:
            self.set_bpe(bpe)

    def set_bpe(self, bpe) -> "UnitTokenizer":
        """Append a BPE stage trained on this tokenizer's units (checked by model id)."""
        if bpe.meta["base_model_id"] != self.units_id:
            raise FeatureError(f"BPE was trained on units of {bpe.meta['base_model_id']!r}, "
                               f"not of this tokenizer ({self.units_id!r})")
        self.bpe = bpe
        self.codebook_sizes = (bpe.vocab_size,)
        return self

    @property
    def model_id(self) -> str:
        return self.bpe.model_id if self.bpe is not None else self.units_id

    def make_codes(self, codes: torch.Tensor, lengths: torch.Tensor, **extra) -> Codes:
        return Codes.from_tensor(codes, lengths, frame_rate=self.frame_rate, codebook_sizes=self.units_codebook_sizes,
                                 sample_rate=self.sample_rate, model_id=self.units_id, n_semantic=1, **extra)

    @property
    def kmeans(self) -> KMeansModel:
        return KMeansModel(self.centroids, self.spec, self.kmeans_info)

    def features(self, wav: torch.Tensor, sample_rate: Optional[int] = None,
                 lengths: Optional[torch.Tensor] = None) -> Features:
        """The features units are made from: ``[B, T, D]`` at ``frame_rate``."""
        from speechtok.protocol import prepare_audio

        sr = self.sample_rate if sample_rate is None else int(sample_rate)
        wav, lengths = prepare_audio(wav.to(self.device), sr, self.sample_rate, 1, lengths)
        return self.extractor.extract(wav, lengths)

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> Codes:
        codes = self._units(wav, lengths)
        return self.bpe.encode(codes) if self.bpe is not None else codes

    def _units(self, wav: torch.Tensor, lengths: torch.Tensor) -> Codes:
        feats = self.extractor.extract(wav, lengths)
        audio_lengths = lengths.clone()
        if self.segmenter is None:
            labels = self.kmeans.predict(feats.feats.to(self.centroids.device), feats.lengths)
            codes = self.make_codes(labels[:, None, :], feats.lengths.to(labels.device), audio_lengths=audio_lengths)
            if self.dedup:
                from speechtok.dedup import dedup

                codes = dedup(codes)
            return codes
        items, durs = [], []
        for f in feats.unbatch():
            bounds = segment(f.cpu(), self.frame_rate, self.segmenter)
            pooled = pool_segments(f.cpu(), bounds)
            items.append(self.kmeans.to("cpu").predict(pooled) if len(pooled) else torch.zeros(0, dtype=torch.long))
            durs.append(bounds[1:] - bounds[:-1])
        N = max((len(i) for i in items), default=0)
        codes = torch.full((len(items), 1, N), -1, dtype=torch.long)
        dur = torch.zeros(len(items), N, dtype=torch.long)
        for b, (i, d) in enumerate(zip(items, durs)):
            codes[b, 0, : len(i)] = i
            dur[b, : len(d)] = d
        n = torch.tensor([len(i) for i in items], dtype=torch.long)
        dev = self.centroids.device
        return self.make_codes(codes.to(dev), n.to(dev), durations=dur.to(dev), audio_lengths=audio_lengths)

    # ----------------------------------------------------------------- persistence
    def config_dict(self) -> dict:
        return {"config_version": CONFIG_VERSION, "features": extractor_config(self.extractor),
                "spec": self.spec.to_dict(), "n_clusters": self.codebook_sizes[0], "dedup": self.dedup,
                "segmenter": asdict(self.segmenter) if self.segmenter else None, "kmeans_info": self.kmeans_info,
                "bpe": {"tokenizer": json.loads(self.bpe.tok.to_str()), "meta": self.bpe.meta} if self.bpe else None}

    def save(self, directory) -> Path:
        """Write a model directory loadable with ``speechtok.load(directory)``."""
        from speechtok.registry import save_model_dir

        state = {"centroids": self.centroids}
        state.update({f"extractor.{k}": v for k, v in extractor_state(self.extractor).items()})
        return save_model_dir(directory, kind="units", name=self.name, config=self.config_dict(), state_dict=state)


def load_units_dir(directory: Path, meta: dict, device: str = "cpu") -> UnitTokenizer:
    """Registry loader for kind ``"units"`` (see `speechtok.registry`)."""
    from speechtok.registry import ModelLoadError, load_weights

    cfg = meta.get("config", {})
    if int(cfg.get("config_version", -1)) > CONFIG_VERSION:
        raise ModelLoadError(f"{directory}: units config version {cfg.get('config_version')} is newer than "
                             f"supported ({CONFIG_VERSION}); upgrade speechtok")
    try:
        state, _ = load_weights(Path(directory), device="cpu")
        ext_state = {k[len("extractor."):]: v for k, v in state.items() if k.startswith("extractor.")}
        extractor = build_extractor(cfg["features"], ext_state or None, device=device)
        spec = FeatureSpec.from_dict(cfg["spec"])
        seg = SegmenterConfig(**cfg["segmenter"]) if cfg.get("segmenter") else None
        km = KMeansModel(state["centroids"], spec, cfg.get("kmeans_info", {}))
    except (KeyError, TypeError, FeatureError) as e:
        raise ModelLoadError(f"{directory}: invalid units model ({type(e).__name__}: {e})") from e
    tok = UnitTokenizer(extractor, km, dedup=bool(cfg.get("dedup")), segmenter=seg, name=meta.get("name", "units"))
    if cfg.get("bpe"):
        import tokenizers as hf

        from speechtok.bpe import UnitBPE

        tok.set_bpe(UnitBPE(hf.Tokenizer.from_str(json.dumps(cfg["bpe"]["tokenizer"])), cfg["bpe"]["meta"]))
    return tok.to(device)
