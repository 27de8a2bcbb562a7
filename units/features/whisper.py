"""Whisper encoder layers as unit features, in PyTorch (`speechtok.units.whisper`; no CTranslate2 needed).

``WhisperExtractor.load(source)`` reads a CTranslate2 directory (e.g.
``speechtok.benchmarks.asr.whisper_model_dir("base")``), a Hugging Face directory or an OpenAI
``.pt`` (see `speechtok.units.whisper.load.load_whisper`) and keeps the encoder up to ``layer``
(`LAYER_CONVENTION`: 0 = input of block 1, ``n_audio_layer`` = ``ln_post`` output, the default).

Frames: 50 Hz; encoder frame ``t`` is centred at ``t / 50`` s, so ``frame_offset_s = 0``: mel frame
``j`` is centred at sample ``160 j`` (centred STFT), conv1 (kernel 3, stride 1, pad 1) keeps that grid
and conv2 (kernel 3, stride 2, pad 1) centres output ``t`` on mel frame ``2 t``, i.e. sample ``320 t``
(its convolutional receptive field, samples ``320 t - 520 .. 320 t + 520``, is symmetric about it).
An item of ``n`` samples has ``ceil(n / 320)`` frames (those centred inside the audio).

Windows: audio is cut into consecutive 30 s windows (samples ``[480000 k, 480000 (k + 1))``, the
last one shorter), each analysed alone, as Whisper itself does: its own log-mel with the
dynamic-range max taken over that window (`speechtok.units.whisper.mel.window_log_mel`), its own
encoder pass, frames ``1500 k ..`` of the item. So a file's features do not depend on the batch it is
in, and a file split at a 30 s boundary into two calls gives the same frames. ``pad_to_window=True``
(default; Whisper's training condition, CTranslate2's numbers) zero-pads each window to 30 s;
``False`` runs a short window unpadded (cheaper; a key mask keeps batched == per item).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch

from speechtok.formats import MAX_BATCH, get_field, safe_text
from speechtok.units.whisper.model import WhisperDims

from .base import (LAYER_CONVENTION, Features, FeatureError, FeatureSpec, MissingWeightsError, check_audio,
                   check_keys)

SAMPLE_RATE = 16000
HOP = 320  # audio samples per encoder frame
WINDOW = 480000  # 30 s
FRAME_OFFSET_S = 0.0
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORAGE_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class WhisperConfig:
    """What a Whisper extractor is; ``describe()["config"]``.

    Attributes:
        source: where the weights were loaded from (a record; `WhisperExtractor.restore` never reads it).
        dims: the model's `WhisperDims` (as a dict in JSON).
        layer: the layer read (`LAYER_CONVENTION`); only blocks up to it are kept.
        checkpoint_hash: sha256 of the whole source checkpoint (`whisper_state_sha256`).
        weights_hash: sha256 of the kept encoder weights (`weights()`), checked on restore.
        storage_dtype: dtype `weights()` returns (the source's: "float16" for the shipped models).
        pad_to_window: zero-pad every window to 30 s (True) or run short windows unpadded.
        compute_dtype: encoder dtype ("float32"; "bfloat16"/"float16" change the numbers).
        batch_size: windows per encoder call (does not change the numbers).
        device: where the encoder runs.
    """

    source: str
    dims: WhisperDims
    layer: int
    checkpoint_hash: str
    weights_hash: str
    storage_dtype: str = "float32"
    pad_to_window: bool = True
    compute_dtype: str = "float32"
    batch_size: int = 8
    device: str = "cpu"

    def __post_init__(self):
        n = self.dims.n_audio_layer
        if not 0 <= self.layer <= n:
            raise FeatureError(f"Whisper layer {self.layer} outside [0, {n}] ({LAYER_CONVENTION})")
        if self.compute_dtype not in COMPUTE_DTYPES or self.storage_dtype not in STORAGE_DTYPES:
            raise FeatureError(f"Whisper compute_dtype {self.compute_dtype!r} / storage_dtype {self.storage_dtype!r}"
                               f" not in {sorted(COMPUTE_DTYPES)}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise FeatureError(f"Whisper batch_size {self.batch_size} outside [1, {MAX_BATCH}]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, path="Whisper config") -> "WhisperConfig":
        """A config read from ``path``, every field checked for type and range."""
        def f(src, key, kind, what="Whisper config", **kw):
            return get_field(src, key, kind, path, FeatureError, what, **kw)

        check_keys(d, cls.__dataclass_fields__, path, "Whisper config")
        dd = f(d, "dims", dict)
        check_keys(dd, WhisperDims.__dataclass_fields__, path, "Whisper dims")
        try:
            dims = WhisperDims(**{k: f(dd, k, int, "Whisper dims", lo=1, hi=1 << 20)
                                  for k in WhisperDims.__dataclass_fields__})
        except ValueError as e:
            raise FeatureError(f"{path}: {e}") from None
        return cls(source=f(d, "source", str), dims=dims,
                   layer=f(d, "layer", int, lo=0, hi=dims.n_audio_layer, default=dims.n_audio_layer),
                   checkpoint_hash=f(d, "checkpoint_hash", str), weights_hash=f(d, "weights_hash", str),
                   storage_dtype=f(d, "storage_dtype", str, default="float32"),
                   pad_to_window=f(d, "pad_to_window", bool, default=True),
                   compute_dtype=f(d, "compute_dtype", str, default="float32"),
                   batch_size=f(d, "batch_size", int, lo=1, hi=MAX_BATCH, default=8),
                   device=f(d, "device", str, default="cpu"))


def _encoder_state(state: dict, layer: int, n_layer: int) -> dict:
    """The ``encoder.*`` weights a reader of ``layer`` needs: front end, blocks ``< layer``, ln_post at the top."""
    out = {}
    for k, t in state.items():
        if not k.startswith("encoder."):
            continue
        parts = k.split(".")
        if parts[1] == "blocks" and int(parts[2]) >= layer or parts[1] == "ln_post" and layer < n_layer:
            continue
        out[k] = t
    return out


class WhisperExtractor(torch.nn.Module):
    """``extract(wav [B, C, S] at 16 kHz, lengths) -> Features [B, T, D]`` at 50 Hz, ``T = ceil(S / 320)``.

    ``extract_layers(wav, lengths, layers)`` gives ``{layer: Features}`` for any layers
    ``0..num_layers`` (= the read ``layer``) from one pass. Build with `load` or `restore`.
    """

    sample_rate = SAMPLE_RATE
    frame_offset_s = FRAME_OFFSET_S

    def __init__(self, config: WhisperConfig, encoder: torch.nn.Module):
        super().__init__()
        self.config = config
        self.encoder = encoder.eval()
        self.num_layers = config.layer
        d = config.dims
        self.spec = FeatureSpec(
            kind="whisper", layer=config.layer, frame_rate=SAMPLE_RATE / HOP, dim=d.n_audio_state,
            sample_rate=SAMPLE_RATE, checkpoint_hash=config.checkpoint_hash,
            options={"pad_to_window": config.pad_to_window, "n_mels": d.n_mels, "dims": asdict(d),
                     "compute_dtype": config.compute_dtype, "windows": "consecutive 30 s, each alone",
                     "mel_max": "per 30 s window", "frame_offset_s": FRAME_OFFSET_S})

    # ------------------------------------------------------------ building
    @classmethod
    def load(cls, source, *, layer: Optional[int] = None, trust_pickle: bool = False, device: str = "cpu",
             **options) -> "WhisperExtractor":
        """From a CTranslate2 dir / Hugging Face dir / OpenAI ``.pt``; ``options``: ``pad_to_window``,
        ``compute_dtype``, ``batch_size``. Blocks past ``layer`` (default: the last) are dropped."""
        from speechtok.units.whisper.load import load_whisper, whisper_state_sha256

        if source is None:
            raise FeatureError("a Whisper extractor needs a source (CTranslate2 dir, Hugging Face dir or OpenAI .pt)")
        unknown = sorted(set(options) - {"pad_to_window", "compute_dtype", "batch_size"})
        if unknown:
            raise FeatureError(f"{source}: unknown Whisper extractor options {safe_text(unknown, 80)}")
        model, info = load_whisper(source, trust_pickle=trust_pickle)
        dims = model.dims
        layer = dims.n_audio_layer if layer is None else int(layer)
        if not 0 <= layer <= dims.n_audio_layer:
            raise FeatureError(f"{source}: layer {layer} outside [0, {dims.n_audio_layer}] ({LAYER_CONVENTION})")
        storage = info["storage_dtype"] if info["storage_dtype"] in STORAGE_DTYPES else "float32"
        state = _encoder_state(model.state_dict(), layer, dims.n_audio_layer)
        del model
        kept = {k: t.to(COMPUTE_DTYPES[storage]) for k, t in state.items()}
        config = WhisperConfig(source=str(source), dims=dims, layer=layer, checkpoint_hash=info["checkpoint_hash"],
                               weights_hash=whisper_state_sha256(kept), storage_dtype=storage, device=str(device),
                               **options)
        return cls._build(config, kept, source)

    @classmethod
    def restore(cls, config: dict, weights: dict, path="Whisper extractor", device: str = "cpu") -> "WhisperExtractor":
        """Inverse of ``describe()["config"]`` + `weights`; refuses weights that do not fit the
        dims/layer (names and shapes, compared before allocating) or whose hash differs."""
        from speechtok.units.whisper.load import check_state, whisper_state_sha256

        cfg = replace(WhisperConfig.from_dict(config, path), device=str(device))
        if not weights:
            raise MissingWeightsError(f"{path}: a Whisper extractor needs its encoder weights (none were given)")
        check_state(cfg.dims, weights, path, keep_blocks=cfg.layer, with_decoder=False)
        got = whisper_state_sha256(weights)
        if got != cfg.weights_hash:
            raise FeatureError(f"{path}: Whisper weights hash {got[:12]}... differs from the config's "
                               f"{cfg.weights_hash[:12]}... (other weights than these features were made with)")
        return cls._build(cfg, weights, path)

    @classmethod
    def _build(cls, config: WhisperConfig, weights: dict, path) -> "WhisperExtractor":
        from speechtok.units.whisper.load import build_whisper

        model = build_whisper(config.dims, weights, COMPUTE_DTYPES[config.compute_dtype],
                              keep_blocks=config.layer, with_decoder=False, path=path)
        return cls(config, model.encoder).to(config.device)

    def describe(self) -> dict:
        return {"type": "whisper", "config": self.config.to_dict(), "checkpoint_hash": self.config.checkpoint_hash}

    def weights(self) -> dict:
        """Encoder weights up to the read layer (OpenAI names, ``encoder.`` prefix) in ``storage_dtype``."""
        dt = COMPUTE_DTYPES[self.config.storage_dtype]
        return {f"encoder.{k}": t.detach().to("cpu", dt).contiguous() for k, t in self.encoder.state_dict().items()}

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @staticmethod
    def num_frames(num_samples: int) -> int:
        return -(-int(num_samples) // HOP)

    # ------------------------------------------------------------ extraction
    def extract(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Features:
        """Audio ``[B, C, S]`` at 16 kHz (zero-padded) + ``lengths [B]`` -> `Features` of ``layer``."""
        return self.extract_layers(wav, lengths, [self.config.layer])[self.config.layer]

    @torch.inference_mode()
    def extract_layers(self, wav: torch.Tensor, lengths: Optional[torch.Tensor], layers) -> dict:
        """``{layer: Features [B, T, D]}`` for ``layers`` (each in ``0..num_layers``), one encoder pass."""
        from speechtok.units.whisper.mel import window_log_mel

        want = sorted({int(x) for x in layers})
        if not want or want[0] < 0 or want[-1] > self.num_layers:
            raise FeatureError(f"Whisper layers {want} outside [0, {self.num_layers}] (this extractor keeps "
                               f"blocks up to layer {self.num_layers}; {LAYER_CONVENTION})")
        mono, lengths = check_audio(wav.to(self.device), lengths)
        B = mono.shape[0]
        windows = [(b, s, min(n, s + WINDOW) - s) for b, n in enumerate(lengths.tolist()) for s in range(0, n, WINDOW)]
        order = sorted(range(len(windows)), key=lambda i: windows[i][2])  # similar lengths together
        results: list = [None] * len(windows)
        pad = self.config.pad_to_window
        for c in range(0, len(order), self.config.batch_size):
            chunk = order[c:c + self.config.batch_size]
            n_max = max(windows[i][2] for i in chunk)
            audio = mono.new_zeros(len(chunk), n_max)
            for j, i in enumerate(chunk):
                b, s, n = windows[i]
                audio[j, :n] = mono[b, s:s + n]
            lens = torch.tensor([windows[i][2] for i in chunk], dtype=torch.long)
            mel, mel_lens = window_log_mel(audio, lens, self.config.dims.n_mels, pad)
            out = self.encoder(mel, None if pad else mel_lens, layers=want)
            for j, i in enumerate(chunk):
                t = self.num_frames(windows[i][2])
                results[i] = {x: out[x][j, :t].float() for x in want}
        frames = torch.tensor([self.num_frames(n) for n in lengths.tolist()], dtype=torch.long, device=mono.device)
        T = int(frames.max()) if B else 0
        feats = {x: mono.new_zeros(B, T, self.spec.dim) for x in want}
        pos = [0] * B
        for (b, _, _), r in zip(windows, results):
            t = r[want[0]].shape[0]
            for x in want:
                feats[x][b, pos[b]:pos[b] + t] = r[x]
            pos[b] += t
        return {x: Features(feats=feats[x], lengths=frames, spec=replace(self.spec, layer=x)) for x in want}

