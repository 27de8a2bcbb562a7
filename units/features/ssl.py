"""HuBERT / WavLM features through torchaudio's ``Wav2Vec2Model`` from local checkpoints.

Sources: a Hugging Face directory (``config.json`` + weights; read with ``transformers``, then
converted with ``torchaudio.models.wav2vec2.utils.import_huggingface_model``) or a fairseq
``.pt`` checkpoint (a pickle: only with ``trust_pickle=True``; converted with torchaudio's
fairseq key map, no fairseq install needed). Once built, an `SSLExtractor` is saved inside a
unit tokenizer directory as safetensors + its torchaudio architecture dict, so loading it again
needs neither ``transformers`` nor pickle.

Layer convention: see `speechtok.units.features.base.LAYER_CONVENTION` (layer L = output of
transformer block L, 1-based; 0 = input of block 1), equal to HF ``hidden_states[L]``.

Batching: frames of item b depend only on its own samples. The conv front end of group-norm
models (HuBERT/WavLM base) normalizes over time; its statistics are taken over each item's valid
frames (a masked GroupNorm), and the transformer runs with an attention mask, so a padded batch
equals per-item runs. Audio longer than ``window_s`` is cut into windows with
``context_s`` of extra audio on each side whose frames are dropped.

Loading (`SSLExtractor.load`, what ``load_extractor("hubert", source)`` calls): the Hugging Face
and fairseq importers live in `speechtok.units.features.ssl_import`. Timing: frame ``j`` is
centred at ``(stride * j + receptive / 2) / sample_rate`` s (``frame_offset_s``; 200/16000 s for
the 400-sample, stride-320 front end of HuBERT/WavLM/wav2vec2).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from .base import (Features, FeatureError, FeatureSpec, MissingWeightsError, check_audio, check_keys, check_layers,
                   mask_features)

SSL_KINDS = ("hubert", "wavlm", "wav2vec2")
# keyword options of `SSLExtractor.load` (fields of `SSLConfig`)
SSL_OPTIONS = ("normalize_audio", "window_s", "context_s")


@dataclass(frozen=True)
class SSLConfig:
    """An SSL extractor: torchaudio architecture kwargs + which layer to read.

    Attributes:
        kind: "hubert", "wavlm" or "wav2vec2".
        layer: see `LAYER_CONVENTION`; 0..num_layers.
        arch: kwargs of ``torchaudio.models.wav2vec2_model`` / ``wavlm_model``.
        normalize_audio: layer-normalize each waveform first (fairseq ``task.normalize``,
            HF ``do_normalize``; True for the large models).
        window_s / context_s: long-audio windowing (seconds).
    """

    kind: str
    layer: int
    arch: dict = field(default_factory=dict)
    normalize_audio: bool = False
    sample_rate: int = 16000
    window_s: float = 30.0
    context_s: float = 1.0

    def __post_init__(self):
        if self.kind not in SSL_KINDS:
            raise FeatureError(f"SSL kind must be one of {SSL_KINDS}, got {self.kind!r}")
        n = int(self.arch.get("encoder_num_layers", 10**9))
        if not 0 <= self.layer <= n:
            raise FeatureError(f"layer {self.layer} outside [0, {n}] for this {self.kind} model")

    def to_dict(self) -> dict:
        arch = {k: ([list(t) for t in v] if k == "extractor_conv_layer_config" else v) for k, v in self.arch.items()}
        return {"kind": self.kind, "layer": self.layer, "arch": arch, "normalize_audio": self.normalize_audio,
                "sample_rate": self.sample_rate, "window_s": self.window_s, "context_s": self.context_s}

    @classmethod
    def from_dict(cls, d: dict, path="SSL config") -> "SSLConfig":
        """A config read from ``path``: every field and architecture size checked for type and range."""
        from speechtok.formats import MAX_SAMPLE_RATE, get_field

        def f(src, key, kind, what="SSL config", **kw):
            return get_field(src, key, kind, path, FeatureError, what, **kw)

        check_keys(d, cls.__dataclass_fields__, path, "SSL config")
        arch = dict(f(d, "arch", dict))
        for key, (lo, hi) in _ARCH_BOUNDS.items():
            if key in arch:
                f(arch, key, int, "SSL architecture", lo=lo, hi=hi)
        for key, v in arch.items():
            if key not in _ARCH_BOUNDS and key != "extractor_conv_layer_config" and not (
                    v is None or isinstance(v, (bool, str)) or isinstance(v, (int, float)) and abs(v) <= 1e4):
                raise FeatureError(f"{path}: SSL architecture {key!r} must be a small scalar, got {str(v)[:40]!r}")
        convs = f(arch, "extractor_conv_layer_config", list, "SSL architecture")
        if not 1 <= len(convs) <= 16 or not all(
                isinstance(t, (list, tuple)) and len(t) == 3 and all(type(v) is int and 1 <= v <= 8192 for v in t)
                for t in convs):
            raise FeatureError(f"{path}: SSL architecture 'extractor_conv_layer_config' must be 1..16 "
                               "[channels, kernel, stride] triples of ints in [1, 8192]")
        arch["extractor_conv_layer_config"] = [tuple(t) for t in convs]
        return cls(kind=f(d, "kind", str), layer=f(d, "layer", int, lo=0, hi=MAX_LAYERS), arch=arch,
                   normalize_audio=f(d, "normalize_audio", bool),
                   sample_rate=f(d, "sample_rate", int, lo=1000, hi=MAX_SAMPLE_RATE),
                   window_s=f(d, "window_s", float, lo=1.0, hi=3600.0),
                   context_s=f(d, "context_s", float, lo=0.0, hi=60.0))


MAX_LAYERS = 256
_ARCH_BOUNDS = {"encoder_embed_dim": (1, 8192), "encoder_num_layers": (1, MAX_LAYERS), "encoder_num_heads": (1, 1024),
                "encoder_ff_interm_features": (1, 65536), "encoder_pos_conv_kernel": (1, 1024),
                "encoder_pos_conv_groups": (1, 1024), "encoder_num_buckets": (1, 4096),
                "encoder_max_distance": (1, 1 << 16)}


def state_dict_sha256(state: dict) -> str:
    """Format-independent weights hash: sha256 over sorted names, shapes and float32 bytes."""
    h = hashlib.sha256()
    for k in sorted(k for k in state if k.startswith(("feature_extractor.", "encoder."))):
        t = state[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _build_model(config: SSLConfig):
    from torchaudio.models import wav2vec2_model, wavlm_model

    factory = wavlm_model if config.kind == "wavlm" else wav2vec2_model
    arch = {k: v for k, v in config.arch.items() if k != "aux_num_out"}
    arch["encoder_num_layers"] = max(config.layer, 1)  # blocks past the read layer are never run
    return factory(**arch, aux_num_out=None)


class SSLExtractor(torch.nn.Module):
    """HuBERT/WavLM/wav2vec2 layer features (a `LayeredExtractor`): ``extract(wav [B, C, S] at
    16 kHz, lengths) -> Features [B, T, D]`` at ``config.layer``; ``extract_layers`` reads several.

    ``model`` is torchaudio's ``Wav2Vec2Model`` (names: ``feature_extractor`` = fairseq
    ``feature_extractor`` / HF ``feature_extractor``; ``encoder.transformer.layers`` = fairseq
    ``encoder.layers`` / HF ``encoder.layers``). Only blocks up to ``layer`` are kept, so
    ``num_layers`` is ``max(layer, 1)``: load with ``layer=None`` (the last) to read every layer.
    """

    def __init__(self, config: SSLConfig, model: torch.nn.Module, checkpoint_hash: Optional[str] = None):
        super().__init__()
        self.config = config
        self.sample_rate = config.sample_rate
        self.model = model.eval().requires_grad_(False)
        self.checkpoint_hash = checkpoint_hash or state_dict_sha256(model.state_dict())
        layers = self.model.encoder.transformer.layers
        del layers[max(config.layer, 1):]  # blocks past the read layer are never used
        self.num_layers = len(layers)
        convs = config.arch["extractor_conv_layer_config"]
        self.hop = 1
        self.receptive = 1
        for _, k, s in convs:
            self.receptive += (k - 1) * self.hop
            self.hop *= s
        self.frame_offset_s = self.receptive / 2 / config.sample_rate  # centre of frame 0's receptive field
        self.group_norm = config.arch.get("extractor_mode", "group_norm") == "group_norm"
        self.spec = FeatureSpec(kind=config.kind, layer=config.layer, frame_rate=config.sample_rate / self.hop,
                                dim=int(config.arch["encoder_embed_dim"]), sample_rate=config.sample_rate,
                                checkpoint_hash=self.checkpoint_hash,
                                options={"normalize_audio": config.normalize_audio})

    # ----------------------------------------------------------------- loading and saving
    @classmethod
    def load(cls, source, *, layer: Optional[int] = None, trust_pickle: bool = False, device="cpu",
             kind: Optional[str] = None, **options) -> "SSLExtractor":
        """A Hugging Face directory or a fairseq ``.pt`` (``trust_pickle`` only) at ``layer``
        (`LAYER_CONVENTION`; None = the last). ``kind`` (hubert/wavlm/wav2vec2) is checked against
        an HF directory's ``model_type``; ``options``: `SSL_OPTIONS`."""
        from pathlib import Path

        from .ssl_import import load_fairseq_ssl, load_hf_ssl

        check_keys(options, SSL_OPTIONS, source, f"{kind or 'SSL'} extractor option")
        if source is None:
            raise FeatureError(f"{kind or 'SSL'} features need a source: a Hugging Face model directory "
                               "or a fairseq .pt (with trust_pickle)")
        path = Path(source)
        if path.is_dir():
            return load_hf_ssl(path, layer, kind=kind, **options).to(device)
        if path.is_file():
            return load_fairseq_ssl(path, layer, kind=kind or "hubert", trust_pickle=trust_pickle,
                                    **options).to(device)
        raise FeatureError(f"{path}: no such checkpoint file or directory")

    @classmethod
    def restore(cls, config: dict, weights: dict, path, device="cpu") -> "SSLExtractor":
        """Inverse of `describe` + `weights` (read from ``path``); refused without weights."""
        if not weights:
            raise MissingWeightsError(f"{path}: an SSL extractor needs its weights (none were saved)")
        config = dict(config)
        h = config.pop("checkpoint_hash", None)
        wh = config.pop("weights_hash", None)  # absent in directories saved before it was written
        if h is not None and not isinstance(h, str) or wh is not None and not isinstance(wh, str):
            raise FeatureError(f"{path}: SSL extractor 'checkpoint_hash' / 'weights_hash' must be strings")
        ext = build_ssl_extractor(SSLConfig.from_dict(config, path), weights, h)
        if wh is not None and ext.weights_hash != wh:
            raise FeatureError(f"{path}: SSL weights sha256 {ext.weights_hash[:12]}... differs from "
                               f"the config's {wh[:12]}... (other weights than these features were made with)")
        return ext.to(device)

    def describe(self) -> dict:
        """``{"type": kind, "config": SSLConfig + checkpoint_hash + weights_hash, "checkpoint_hash"}``:
        the hash of the full checkpoint, and of the saved weights (only the blocks up to ``layer``),
        which `restore` checks."""
        return {"type": self.config.kind, "config": dict(self.config.to_dict(), checkpoint_hash=self.checkpoint_hash,
                                                          weights_hash=self.weights_hash),
                "checkpoint_hash": self.checkpoint_hash}

    @functools.cached_property
    def weights_hash(self) -> str:
        """`state_dict_sha256` of `weights` (the extractor is frozen: hashed once)."""
        return state_dict_sha256(self.weights())

    def weights(self) -> dict:
        """torchaudio ``Wav2Vec2Model`` tensors (the kept blocks)."""
        return dict(self.model.state_dict())

    def num_frames(self, num_samples: int) -> int:
        n = int(num_samples)
        for _, k, s in self.config.arch["extractor_conv_layer_config"]:
            n = 0 if n < k else (n - k) // s + 1
        return n

    # ----------------------------------------------------------------- core
    def _frontend(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv front end: ``x [B, S]`` -> (``[B, T, C]`` conv features, frames ``[B]``)."""
        fe = self.model.feature_extractor
        flen = torch.tensor([self.num_frames(int(n)) for n in lengths], dtype=torch.long, device=x.device)
        T = int(flen.max()) if len(flen) else 0
        channels = int(self.config.arch["extractor_conv_layer_config"][-1][0])
        if T == 0:
            return x.new_zeros(x.shape[0], 0, channels), flen
        if not (self.group_norm and len(set(lengths.tolist())) > 1):
            feats, _ = fe(x, None)
            return feats[:, :T], flen
        # GroupNorm (fairseq "default" mode) normalizes each channel over time: take its statistics
        # over each item's valid frames only, so padded batches equal per-item runs exactly.
        h, n = x[:, None, :], lengths.clone()
        for block in fe.conv_layers:
            h = block.conv(h)
            n = torch.where(n < block.kernel_size, torch.zeros_like(n), (n - block.kernel_size) // block.stride + 1)
            norm = block.layer_norm
            if isinstance(norm, torch.nn.GroupNorm):
                if norm.num_groups != norm.num_channels:
                    raise FeatureError("masked GroupNorm supports one group per channel (fairseq) only")
                valid = (torch.arange(h.shape[-1], device=h.device)[None, :] < n[:, None])[:, None, :]
                cnt = n.clamp(min=1)[:, None, None].to(h.dtype)
                mean = (h * valid).sum(-1, keepdim=True) / cnt
                var = (((h - mean) * valid) ** 2).sum(-1, keepdim=True) / cnt
                h = (h - mean) / torch.sqrt(var + norm.eps) * norm.weight[None, :, None] + norm.bias[None, :, None]
            elif norm is not None:
                h = norm(h)
            h = torch.nn.functional.gelu(h)
        return h.transpose(1, 2)[:, :T], flen

    def _normalize(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-item waveform layer norm over the valid samples (fairseq ``normalize``)."""
        mask = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
        n = lengths.clamp(min=1)[:, None].float()
        mean = (x * mask).sum(1, keepdim=True) / n
        var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
        return (x - mean) / torch.sqrt(var + 1e-5) * mask

    def _forward(self, x: torch.Tensor, lengths: torch.Tensor, layers: list[int]
                 ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """``x [B, S]`` (zero-padded), ``lengths [B]`` -> (``{layer: [B, T, D]}``, ``[B]``); the
        blocks run up to the highest of ``layers`` only."""
        feats, flen = self._frontend(x, lengths)
        if feats.shape[1] == 0:
            return {L: feats.new_zeros(x.shape[0], 0, self.spec.dim) for L in layers}, flen
        h, mask = self.model.encoder._preprocess(feats, flen)
        tr = self.model.encoder.transformer
        out = tr._preprocess(h)
        pad = torch.arange(out.shape[1], device=out.device)[None, :] >= flen[:, None]  # True at padding
        got = {0: mask_features(out, flen)} if 0 in layers else {}
        bias = None
        for i, block in enumerate(tr.layers[: max(layers)], start=1):
            if self.config.kind == "wavlm":  # torchaudio's WavLM attention takes a key padding mask only
                out, bias = block(out, position_bias=bias, key_padding_mask=pad if bool(pad.any()) else None)
            else:
                out, bias = block(out, attention_mask=mask, position_bias=bias)
            if i in layers:
                got[i] = mask_features(out, flen)
        return got, flen

    def _windowed(self, x: torch.Tensor, n: int, layers: list[int]) -> dict[int, torch.Tensor]:
        """One long item ``x [S]`` -> ``{layer: [T, D]}``: windows with context, run as one batch."""
        hop = self.hop
        total = self.num_frames(n)
        win_f = max(1, int(self.config.window_s * self.sample_rate) // hop)
        ctx = (int(self.config.context_s * self.sample_rate) // hop) * hop
        chunks, keep = [], []
        for f0 in range(0, total, win_f):
            f1 = min(total, f0 + win_f)
            a = max(0, f0 * hop - ctx)
            b = min(n, (f1 - 1) * hop + self.receptive + ctx)
            chunks.append(x[a:b])
            keep.append((f0 - a // hop, f1 - f0))
        lens = torch.tensor([c.shape[0] for c in chunks], dtype=torch.long, device=x.device)
        batch = torch.zeros(len(chunks), int(lens.max()), device=x.device)
        for i, c in enumerate(chunks):
            batch[i, : c.shape[0]] = c
        out, _ = self._forward(batch, lens, layers)
        return {L: torch.cat([o[i, s: s + m] for i, (s, m) in enumerate(keep)], dim=0) for L, o in out.items()}

    @torch.inference_mode()
    def extract_layers(self, wav: torch.Tensor, lengths: Optional[torch.Tensor], layers) -> dict:
        """Audio ``[B, C, S]`` at 16 kHz + ``lengths [B]`` -> ``{layer: Features}`` for each of
        ``layers`` (0..``num_layers``), from one forward pass stopping after the highest."""
        layers = check_layers(layers, self.num_layers)
        mono, lengths = check_audio(wav.to(self.device), lengths)
        if self.config.normalize_audio:  # over the whole item, before any windowing
            mono = self._normalize(mono, lengths)
        specs = {L: replace(self.spec, layer=L) for L in layers}
        max_len = int(self.config.window_s * self.sample_rate)
        if mono.shape[0] == 0 or int(lengths.max()) <= max_len:
            out, flen = self._forward(mono, lengths, layers)
            return {L: Features(feats=out[L], lengths=flen, spec=specs[L]) for L in layers}
        items = [self._windowed(mono[b], int(n), layers) if int(n) > max_len else
                 {L: f[0] for L, f in self._forward(mono[b:b + 1, : int(n)], lengths[b:b + 1], layers)[0].items()}
                 for b, n in enumerate(lengths)]
        flen = torch.tensor([it[layers[0]].shape[0] for it in items], dtype=torch.long, device=mono.device)
        result = {}
        for L in layers:
            feats = mono.new_zeros(len(items), int(flen.max()), self.spec.dim)
            for b, it in enumerate(items):
                feats[b, : it[L].shape[0]] = it[L]
            result[L] = Features(feats=feats, lengths=flen, spec=specs[L])
        return result

    def extract(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Features:
        """Audio ``[B, C, S]`` at 16 kHz (zero-padded) + ``lengths [B]`` -> `Features` ``[B, T, D]``."""
        return self.extract_layers(wav, lengths, [self.config.layer])[self.config.layer]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_ssl_extractor(config: SSLConfig, state_dict: Optional[dict] = None,
                        checkpoint_hash: Optional[str] = None) -> SSLExtractor:
    """Build the torchaudio model for ``config`` and load ``state_dict`` (torchaudio names).

    The architecture is first built on the meta device and its tensor shapes compared with
    ``state_dict``: a config that disagrees with its weights is refused before anything is allocated."""
    if state_dict is not None:
        try:
            with torch.device("meta"):
                own = {k: tuple(v.shape) for k, v in _build_model(config).state_dict().items()}
        except (TypeError, ValueError, RuntimeError, AssertionError) as e:
            raise FeatureError(f"invalid SSL architecture ({type(e).__name__}: {str(e)[:120]})") from e
        missing = [k for k in own if k not in state_dict and not k.startswith("aux.")]
        if missing:
            raise FeatureError(f"SSL weights lack {len(missing)} tensors, e.g. {missing[:3]}")
        wrong = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != own[k]]
        if wrong:
            raise FeatureError(f"SSL weights do not match the architecture: {wrong[0]} is "
                               f"{tuple(state_dict[wrong[0]].shape)}, the config needs {own[wrong[0]]}")
    model = _build_model(config)
    if state_dict is not None:
        if checkpoint_hash is None:
            checkpoint_hash = state_dict_sha256(state_dict)
        model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return SSLExtractor(config, model, checkpoint_hash)
