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
stored inside ``config.json`` (its HF tokenizer JSON + metadata). A unit vocoder
(`speechtok.units.vocoder`, trained with ``speechtok units train-vocoder``) is stored in the same
directory: a ``vocoder`` section in ``config.json`` (its config + version) and ``vocoder.*`` tensors;
with one, ``decode(codes)`` turns frame, deduped, BPE and syllable codes back into speech.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from speechtok.codes import Codes
from speechtok.formats import MAX_CODEBOOK_SIZE, check_format, get_field, safe_text
from speechtok.protocol import BaseTokenizer, Waveform, check_codes_fit

from .features import restore_extractor
from .features.base import Features, FeatureError, FeatureExtractor, FeatureSpec
from .kmeans import KMeansModel
from .segment import SegmenterConfig, pool_segments, segment

CONFIG_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def check_name(name, where: str = "unit tokenizer") -> str:
    """``name`` if it is a valid model name (1-64 of ``A-Za-z0-9._+-``, starting alphanumeric)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise FeatureError(f"{where}: name {safe_text(repr(name), 80)} must be 1-64 characters of A-Za-z0-9._+- "
                           "starting with a letter or digit")
    return name


def sanitize_name(text: str, fallback: str = "units") -> str:
    """A valid model name made from ``text`` (e.g. an output directory's name): other characters -> '-'."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).lstrip("._+-")[:64]
    return s if _NAME.fullmatch(s) else fallback


def default_name(spec: FeatureSpec, n_clusters: int, dedup: bool = False,
                 segmenter: Optional[SegmenterConfig] = None) -> str:
    """A descriptive name for a user-trained tokenizer, e.g. ``mfcc-km500-dedup``, ``hubert-l6-km500``."""
    parts = [spec.kind + (f"-l{spec.layer}" if spec.layer >= 0 else ""), f"km{n_clusters}"]
    parts += ["dedup"] if dedup else []
    parts += [f"{segmenter.method}{segmenter.target_rate:g}hz"] if segmenter else []
    return sanitize_name("-".join(parts))


class UnitTokenizer(BaseTokenizer):
    """Speech -> discrete units through the `Codes` interface (see module doc).

    Args:
        extractor: a `FeatureExtractor` (MFCC, SSL, Whisper).
        kmeans: centroids trained on this extractor's features (pooled ones if ``segmenter``).
        dedup: merge repeated units (``durations`` set).
        segmenter: syllable segmentation config (None: frame units).
        name: model name used in ``model_id`` (default: `default_name`, e.g. ``mfcc-km500-dedup``).
        bpe: optional `UnitBPE` applied last (trained on this tokenizer's units).

    ``vocoder`` (a `UnitVocoder`, see `set_vocoder`) makes `decode` available.
    """

    accepts_durations = True  # `decode` expands durations itself (BPE tokens first spell their units)

    def __init__(self, extractor, kmeans: KMeansModel, dedup: bool = False,
                 segmenter: Optional[SegmenterConfig] = None, name: Optional[str] = None, bpe=None):
        super().__init__()
        if not isinstance(extractor, FeatureExtractor):
            raise FeatureError(f"{type(extractor).__name__} is not a FeatureExtractor")
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
        self.name = check_name(name if name is not None else default_name(spec, kmeans.n_clusters, dedup, segmenter))
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
        self.vocoder = None

    def set_vocoder(self, vocoder) -> "UnitTokenizer":
        """Attach a `UnitVocoder` trained on this tokenizer's units (refused otherwise)."""
        from .vocoder import check_vocoder_matches

        check_vocoder_matches(vocoder.config, self)
        self.vocoder = vocoder.to(self.centroids.device).eval()
        return self

    @property
    def can_decode(self) -> bool:
        return self.vocoder is not None

    def frame_units(self, codes: Codes) -> Codes:
        """Any codes of this tokenizer -> frame units ``[B, 1, T]`` at ``frame_rate`` (``durations=None``).

        BPE tokens are spelled back into units; with ``durations`` (deduped/syllable units, BPE
        token spans) each unit is repeated for its frames. A BPE token over several *deduped* units
        only knows their total duration, so it is split evenly among them (exact for BPE over frame
        units, an approximation over deduped ones)."""
        if self.bpe is not None and codes.model_id == self.bpe.model_id:
            units = self.bpe.decode(codes)
            if codes.durations is not None:
                durs = torch.zeros(units.codes.shape[0], units.codes.shape[-1], dtype=torch.long)
                for b in range(codes.batch_size):
                    n = int(codes.lengths[b])
                    per_tok = self.bpe._nsym[codes.codes[b, 0, :n].cpu()]
                    d = codes.durations[b, :n].cpu().long()
                    base, rem = d // per_tok, d % per_tok
                    tok_of = torch.repeat_interleave(torch.arange(n), per_tok)
                    first = torch.cumsum(per_tok, 0) - per_tok
                    pos = torch.arange(len(tok_of)) - first[tok_of]
                    durs[b, : len(tok_of)] = base[tok_of] + (pos < rem[tok_of]).long()
                units = units.with_(durations=durs.to(units.codes.device))
            codes = units
        return codes.expand()

    @torch.inference_mode()
    def decode(self, codes: Codes) -> Waveform:
        """`Codes` of this tokenizer (frame, deduped, syllable or BPE; its ``model_id`` or, with a
        BPE stage, the underlying units' id) -> `Waveform` ``[B, 1, S]`` at ``sample_rate``, ``S =
        frames * hop``; with ``audio_lengths`` in the codes, lengths are exactly those (the few
        samples past the last whole frame, if any, are zeros)."""
        if self.vocoder is None:
            raise FeatureError(f"{self.model_id} has no unit vocoder, so it cannot decode; train one with "
                               "`speechtok units train-vocoder TOKENIZER_DIR CONFIG --run-dir D --export OUT`")
        if codes.model_id != self.units_id:
            codes.check_model(self.model_id)
            check_codes_fit(self, codes)
        else:  # frame units under a BPE stage: the units' own codebook
            check_codes_fit(self, codes, codebook_sizes=self.units_codebook_sizes)
        codes.validate()
        units = self.frame_units(codes.to(self.centroids.device))
        hop = self.vocoder.hop
        audio = self.vocoder(units.codes[:, 0], units.lengths)
        lengths = units.lengths * hop
        if codes.audio_lengths is not None:  # exact input length: frames cover all but the last window's tail
            lengths = codes.audio_lengths.to(lengths.device).clone()
            S = int(lengths.max()) if lengths.numel() else 0
            audio = torch.nn.functional.pad(audio, (0, S - audio.shape[-1])) if S > audio.shape[-1] else audio[..., :S]
        mask = torch.arange(audio.shape[-1], device=audio.device)[None] < lengths[:, None]
        return Waveform(audio * mask[:, None, :], lengths, self.sample_rate)

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
        from speechtok.protocol import as_audio_tensor, prepare_audio

        sr = self.sample_rate if sample_rate is None else sample_rate  # checked by prepare_audio
        wav, lengths = prepare_audio(as_audio_tensor(wav).to(self.device), sr, self.sample_rate, 1, lengths)
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
        return {"config_version": CONFIG_VERSION, "features": self.extractor.describe(),
                "spec": self.spec.to_dict(), "n_clusters": self.units_codebook_sizes[0], "dedup": self.dedup,
                "segmenter": asdict(self.segmenter) if self.segmenter else None, "kmeans_info": self.kmeans_info,
                "bpe": {"tokenizer": json.loads(self.bpe.tok.to_str()), "meta": self.bpe.meta} if self.bpe else None,
                "vocoder": vocoder_section(self.vocoder) if self.vocoder is not None else None}

    def save(self, directory) -> Path:
        """Write a model directory loadable with ``speechtok.load(directory)``."""
        from speechtok.registry import save_model_dir

        state = {"centroids": self.centroids}
        state.update({f"extractor.{k}": v for k, v in self.extractor.weights().items()})
        if self.vocoder is not None:
            state.update({f"vocoder.{k}": v for k, v in self.vocoder.state_dict().items()})
        return save_model_dir(directory, kind="units", name=self.name, config=self.config_dict(), state_dict=state)


def _read_units_config(directory: Path, meta: dict, state: dict):
    """Check a units ``config.json`` (types, ranges, sizes against the weights) before building
    anything; returns (name, config dict, spec, segmenter or None). Raises `FeatureError`."""
    path = Path(directory) / "config.json"

    def f(d, key, kind, what="units config", **kw):
        return get_field(d, key, kind, path, FeatureError, what, **kw)

    name = check_name(f(meta, "name", str, "model config"), str(path))
    cfg = f(meta, "config", dict, "model config")
    f(cfg, "config_version", int, lo=1, hi=CONFIG_VERSION)
    f(cfg, "features", dict)
    spec = FeatureSpec.from_dict(f(cfg, "spec", dict), path)
    K = f(cfg, "n_clusters", int, lo=1, hi=MAX_CODEBOOK_SIZE)
    f(cfg, "dedup", bool, default=False)
    f(cfg, "kmeans_info", dict, default={})
    seg = f(cfg, "segmenter", dict, default=None, allow_none=True)
    if seg is not None:
        seg = SegmenterConfig(method=f(seg, "method", str, "units segmenter"),
                              target_rate=f(seg, "target_rate", float, "units segmenter", lo=1e-3, hi=1000.0))
    if "centroids" not in state:
        raise FeatureError(f"{directory}: the weights file holds no 'centroids'")
    from .kmeans import check_centroids

    check_centroids(state["centroids"], f"{directory} centroids")
    # K: the centroids (older files with a BPE stage wrote the BPE vocabulary here)
    if state["centroids"].shape[1] != spec.dim or cfg.get("bpe") is None and state["centroids"].shape[0] != K:
        raise FeatureError(f"{directory}: centroids are {tuple(state['centroids'].shape)}, the config says "
                           f"n_clusters={K} of dim {spec.dim}")
    return name, cfg, spec, seg


def load_units_dir(directory: Path, meta: dict, device: str = "cpu") -> UnitTokenizer:
    """Registry loader for kind ``"units"`` (see `speechtok.registry`); every value of
    ``config.json`` is checked before anything is built."""
    from speechtok.registry import ModelLoadError, load_weights

    try:
        state, _ = load_weights(Path(directory), device="cpu")
        name, cfg, spec, seg = _read_units_config(directory, meta, state)
        ext_state = {k[len("extractor."):]: v for k, v in state.items() if k.startswith("extractor.")}
        extractor = restore_extractor(cfg["features"], ext_state, device=device, path=Path(directory) / "config.json")
        if extractor.spec.checkpoint_hash != spec.checkpoint_hash or extractor.spec.dim != spec.dim:
            # e.g. a Whisper model directory named in config.json that is not the one trained on
            raise FeatureError(f"{Path(directory) / 'config.json'}: its feature extractor has weights sha256 "
                               f"{extractor.spec.checkpoint_hash[:12]} (dim {extractor.spec.dim}); the units were "
                               f"trained on {spec.checkpoint_hash[:12]} (dim {spec.dim})")
        km = KMeansModel(state["centroids"], spec, cfg.get("kmeans_info", {}))
        tok = UnitTokenizer(extractor, km, dedup=cfg.get("dedup", False), segmenter=seg, name=name)
        if cfg.get("bpe") is not None:
            tok.set_bpe(_load_bpe_section(directory, cfg["bpe"]))
        if cfg.get("vocoder") is not None:
            tok.set_vocoder(load_vocoder_section(directory, cfg["vocoder"], state))
    except (KeyError, TypeError, FeatureError) as e:
        msg = str(e) if isinstance(e, FeatureError) else f"{type(e).__name__}: {e}"
        raise ModelLoadError(f"{directory}: invalid units model ({safe_text(msg, 300)})") from e
    return tok.to(device)


def _load_bpe_section(directory, section) -> "object":
    """The BPE stage stored in a units ``config.json`` (its HF tokenizer JSON + metadata), checked."""
    import tokenizers as hf

    from speechtok.bpe import FORMAT as BPE_FORMAT, FORMAT_VERSION as BPE_VERSION, UnitBPE, check_bpe

    path = Path(directory) / "config.json"

    def f(d, key, kind, **kw):
        return get_field(d, key, kind, path, FeatureError, "units BPE section", **kw)

    if not isinstance(section, dict):
        raise FeatureError(f"{path}: 'bpe' must be a JSON object or null")
    tok_json, bmeta = f(section, "tokenizer", dict), f(section, "meta", dict)
    check_format(bmeta, path, BPE_FORMAT, BPE_VERSION, FeatureError, "units BPE section")
    if len(f(bmeta, "codebook_sizes", list)) != 1:
        raise FeatureError(f"{path}: units BPE 'codebook_sizes' must be one int (the units' K)")
    try:
        tok = hf.Tokenizer.from_str(json.dumps(tok_json))
    except Exception as e:  # the HF tokenizers library raises its own exception type
        raise FeatureError(f"{path}: unreadable BPE tokenizer ({safe_text(e, 120)})") from e
    check_bpe(tok, bmeta, path, FeatureError)
    return UnitBPE(tok, bmeta)


def vocoder_section(vocoder) -> dict:
    """The ``vocoder`` section of a units ``config.json``."""
    from .vocoder import VOCODER_VERSION

    return {"version": VOCODER_VERSION, "config": vocoder.config.to_dict(), "weights_hash": vocoder.weights_hash()}


def load_vocoder_section(directory, section: dict, state: dict):
    """Rebuild the vocoder of a units directory from its ``config.json`` section + ``vocoder.*``
    tensors; the config is checked and its tensor shapes compared with the weights before
    anything is allocated. Raises `FeatureError` (a `VocoderError`) naming the file."""
    from .vocoder import VOCODER_VERSION, UnitVocoderConfig, VocoderError, build_vocoder

    path = Path(directory) / "config.json"
    get_field(section, "version", int, path, VocoderError, "units vocoder section", lo=1, hi=VOCODER_VERSION)
    vcfg = UnitVocoderConfig.from_dict(get_field(section, "config", dict, path, VocoderError,
                                                 "units vocoder section"), path)
    vstate = {k[len("vocoder."):]: v for k, v in state.items() if k.startswith("vocoder.")}
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_vocoder(vcfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in vstate.items()}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise VocoderError(f"{path}: vocoder tensors do not match its config (e.g. {diff[:3]}: "
                           f"{[got.get(k) for k in diff[:3]]} vs {[want.get(k) for k in diff[:3]]})")
    voc = build_vocoder(vcfg)
    voc.load_state_dict(vstate)
    return voc
