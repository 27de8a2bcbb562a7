"""Training configuration: frozen dataclasses, loadable from a JSON or YAML file.

A config file is a nested mapping whose keys are the dataclass fields below; unknown keys are
errors that name the key and the file (a typo must not silently train the wrong model)::

    {"model": {"preset": "speechtok-16k"},
     "data": {"crop_seconds": 1.0, "batch_size": 8},
     "distill": {"teacher": {"kind": "whisper", "path": "whisper:base"}},
     "steps": 10000}

Shipped configs name no data: the training commands take it with ``--data MANIFEST`` (repeatable;
`with_train_data`), which replaces ``data.train``. Relative paths in ``data.train``/``data.valid``/
teacher paths are resolved against the config file's folder by `load_train_config`; a teacher
path ``whisper:NAME`` (tiny.en, base) names installed Whisper weights (`resolve_teacher_path`).
Every number is checked for type and range (`_check_ranges`), so ``batch_size: 0`` or
``steps: -1`` fail at load with the file (or ``--set``) and the key named.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from speechtok.formats import MAX_BATCH

from ..teachers import TEACHER_KINDS

CONFIG_FORMAT = "speechtok.train"
CONFIG_FORMAT_VERSION = 1


class TrainConfigError(ValueError):
    """A training config is malformed (names the file/key and the problem)."""


INF = math.inf
MAX_STEPS = 10 ** 10  # optimizer steps: far beyond any run, small enough to stay an exact int


def _check_ranges(obj, ranges: dict) -> None:
    """Each field of ``obj`` (a number or a tuple of numbers) lies in ``ranges[field] = (lo, hi)``
    (inclusive; ``lo`` given as ``(lo,)`` is exclusive) and is not NaN or infinite (ints compare exactly)."""
    for name, (lo, hi) in ranges.items():
        value = getattr(obj, name)
        if value is None:
            continue
        for v in value if isinstance(value, tuple) else (value,):
            strict = isinstance(lo, tuple)
            low = lo[0] if strict else lo
            if isinstance(v, float) and not math.isfinite(v) or (v <= low if strict else v < low) or v > hi:
                span = f"{'(' if strict else '['}{low}, {hi}]"
                raise TrainConfigError(f"{name} must lie in {span}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where audio comes from and how it is cut.

    Attributes:
        train: manifests (``*.jsonl``, the shared/ schema) or directories of audio files.
        valid: the same for the fixed validation batch (logged audio, validation losses).
        crop_seconds: length of each random training crop (s).
        batch_size: crops per step *per process* (DDP multiplies it by the world size).
        num_workers: DataLoader workers (0: load in the training process).
        min_seconds: skip utterances shorter than this (s).
        exclude_speakers: manifest ``speaker`` values kept out of training (a dev split).
        exclude_sources: manifest ``source`` values left out (e.g. a corpus or a licence).
        valid_items: utterances in the validation batch.
    """

    train: tuple[str, ...] = ()
    valid: tuple[str, ...] = ()
    crop_seconds: float = 1.0
    batch_size: int = 8
    num_workers: int = 0
    min_seconds: float = 0.0
    exclude_speakers: tuple[str, ...] = ()
    exclude_sources: tuple[str, ...] = ()
    valid_items: int = 4

    def __post_init__(self):
        _check_ranges(self, {"crop_seconds": ((0.0,), 3600.0), "batch_size": (1, MAX_BATCH),
                             "num_workers": (0, 1024), "min_seconds": (0.0, 3600.0), "valid_items": (1, MAX_BATCH)})


@dataclass(frozen=True)
class LossConfig:
    """Generator loss weights and spectral loss shapes (defaults follow DAC)."""

    mel_weight: float = 15.0
    stft_weight: float = 0.0
    adv_weight: float = 1.0
    feature_weight: float = 2.0
    penalty_weight: float = 1.0
    mel_windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    stft_windows: tuple[int, ...] = (2048, 512)
    adversarial: str = "lsgan"  # or "hinge"
    adv_start_step: int = 0  # train without the GAN losses before this step

    def __post_init__(self):
        _check_ranges(self, {"mel_weight": (0.0, INF), "stft_weight": (0.0, INF), "adv_weight": (0.0, INF),
                             "feature_weight": (0.0, INF), "penalty_weight": (0.0, INF), "mel_windows": (2, 1 << 16),
                             "mel_bins": (1, 4096), "stft_windows": (2, 1 << 16), "adv_start_step": (0, MAX_STEPS)})
        if len(self.mel_windows) != len(self.mel_bins):
            raise TrainConfigError(f"mel_windows {self.mel_windows} and mel_bins {self.mel_bins} differ in length")
        if self.adversarial not in ("lsgan", "hinge"):
            raise TrainConfigError(f"adversarial must be 'lsgan' or 'hinge', got {self.adversarial!r}")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-period (HiFi-GAN) + multi-scale STFT (EnCodec) discriminators."""

    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    period_channels: int = 32
    stft_windows: tuple[int, ...] = (2048, 1024, 512)
    stft_channels: int = 32

    def __post_init__(self):
        _check_ranges(self, {"periods": (1, 1024), "period_channels": (1, 4096), "stft_windows": (2, 1 << 16),
                             "stft_channels": (1, 4096)})


@dataclass(frozen=True)
class OptimConfig:
    """AdamW for generator and discriminators; warmup then exponential decay per step."""

    lr: float = 3e-4
    disc_lr: float = 3e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_gamma: float = 1.0  # lr *= gamma each step after warmup (DAC: 0.999996)
    grad_clip: float = 1000.0
    disc_grad_clip: float = 10.0

    def __post_init__(self):
        _check_ranges(self, {"lr": ((0.0,), 10.0), "disc_lr": ((0.0,), 10.0), "betas": (0.0, 0.999999),
                             "weight_decay": (0.0, 10.0), "warmup_steps": (0, MAX_STEPS), "lr_gamma": ((0.0,), 1.0),
                             "grad_clip": ((0.0,), INF), "disc_grad_clip": ((0.0,), INF)})


@dataclass(frozen=True)
class TeacherConfig:
    """A frozen semantic teacher (built by `speechtok.codec.teachers.build_teacher`).

    kind:
        a feature extractor kind of `speechtok.units.features.EXTRACTORS` (``"whisper"``,
        ``"hubert"``, ``"wavlm"``, ``"wav2vec2"``, ``"mfcc"``, ``"logmel"``; ``path`` is what
        ``load_extractor`` takes), ``"hf"`` (a Hugging Face directory; the kind is its
        ``model_type``), ``"fairseq"`` (a fairseq HuBERT ``.pt``; needs ``trust_pickle``),
        ``"cached"`` (features precomputed by `speechtok.codec.teachers.cached.precompute_features`),
        ``"random"`` (a fixed random projection of log-mel frames: for tests and dry runs).
    path: the checkpoint (or cache folder); ``whisper:NAME`` (tiny.en, base) names installed
        Whisper weights.
    layer: per `speechtok.units.features.base.LAYER_CONVENTION` (layer L = output of transformer
        block L, 1-based; 0 = its input); None = the model's default (SSL: the last block;
        Whisper: what its extractor reads).
    pad_to_window: whisper: pad inputs to the 30 s window (as Whisper was trained).
    options: more keyword options of the extractor's ``load`` (e.g. ``normalize_audio``).
    The teacher runs where the trainer runs (``TrainConfig.device``, ``threads``).
    """

    kind: str = "random"
    path: Optional[str] = None
    layer: Optional[int] = None
    trust_pickle: bool = False
    dim: int = 64  # "random" only
    frame_rate: float = 50.0  # "random" only
    pad_to_window: bool = True
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in TEACHER_KINDS:
            raise TrainConfigError(f"kind {self.kind!r} is not a teacher kind; valid kinds: {list(TEACHER_KINDS)}")
        _check_ranges(self, {"layer": (0, 1024), "dim": (1, 1 << 16), "frame_rate": ((0.0,), 1000.0)})


@dataclass(frozen=True)
class DistillConfig:
    """Semantic distillation into the model's semantic latent (split-RVQ semantic codebook or RVQ
    level 1, whichever the model's topology exposes).

    loss: ``"frame_cosine"`` (Mimi: 1 - cos per frame) or ``"dim_cosine"`` (SpeechTokenizer's
    D-axis loss: -log sigmoid(cos over time per feature dimension)).
    target_norm: ``"none"`` (raw teacher states) or ``"utterance"`` (each crop's teacher states
    standardized per dimension over its frames, `speechtok.codec.distill.standardize`).
    """

    teacher: Optional[TeacherConfig] = None
    weight: float = 1.0
    loss: str = "frame_cosine"
    target_norm: str = "none"

    def __post_init__(self):
        _check_ranges(self, {"weight": (0.0, INF)})
        if self.loss not in ("frame_cosine", "dim_cosine"):
            raise TrainConfigError(f"loss must be 'frame_cosine' or 'dim_cosine', got {self.loss!r}")
        if self.target_norm not in ("none", "utterance"):
            raise TrainConfigError(f"target_norm must be 'none' or 'utterance', got {self.target_norm!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a codec training run needs.

    Attributes:
        model: the codec config as a mapping (``{"preset": name, ...overrides}`` or the full
            `speechtok.codec.config` fields), handed to the codec's builder.
        steps: total optimizer steps.
        seed: seeds parameters, crops and data order (exact resume depends on it).
        quantize_prob: probability that a training item is quantized (Mimi trains with 0.5: the
            rest pass the continuous latent to the decoder); 1.0 always quantizes.
        quantize_start_step: train as an autoencoder (the decoder gets the continuous latent)
            before this step; at it every codebook is initialised again (k-means on the latents
            of that time), so the codes start from informative latents rather than those of a
            random encoder. 0: quantize from the start.
        quantizer_dropout: probability that an item uses a random number of codebooks.
        quantizer_options: more training-only `QuantizerConfig` fields (``decay``,
            ``dead_code``, ``kmeans_init``, ``commitment_weight``, ...).
        amp: ``"auto"`` (bf16 on CUDA, off on CPU), ``"bf16"``, ``"fp16"`` or ``"off"``.
        compile: ``torch.compile`` the generator and discriminators (CUDA only).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        threads: CPU threads for torch (0: leave torch's default).
    """

    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    steps: int = 1000
    seed: int = 0
    quantize_prob: float = 1.0
    quantize_start_step: int = 0
    quantizer_dropout: float = 0.0
    quantizer_options: dict = field(default_factory=dict)
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 0  # log validation audio every N steps (0: never)
    valid_every: int = 0
    amp: str = "auto"
    compile: bool = False
    device: str = "auto"
    threads: int = 0
    tensorboard: bool = True

    def __post_init__(self):
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise TrainConfigError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")
        _check_ranges(self, {"quantize_prob": (0.0, 1.0), "quantizer_dropout": (0.0, 1.0),
                             "quantize_start_step": (0, INF), "steps": (0, MAX_STEPS), "log_every": (1, MAX_STEPS), "checkpoint_every": (0, MAX_STEPS),
                             "keep_checkpoints": (1, 10 ** 6), "sample_every": (0, MAX_STEPS),
                             "valid_every": (0, MAX_STEPS), "threads": (0, 1024)})
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise TrainConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["format"] = CONFIG_FORMAT
        d["format_version"] = CONFIG_FORMAT_VERSION
        return d

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------- parsing
def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise TrainConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TrainConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise TrainConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls, data: Any, where: str = ""):
    """Build dataclass ``cls`` from a nested mapping; unknown keys raise `TrainConfigError`."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise TrainConfigError(f"{where or 'top level'}: expected a mapping for {cls.__name__}, "
                               f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    # "format"/"format_version" are file metadata; keys starting with "_" are comments
    data = {k: v for k, v in data.items() if k not in ("format", "format_version") and not k.startswith("_")}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TrainConfigError(f"{where or 'top level'}: unknown key(s) {unknown} for {cls.__name__}; "
                               f"valid: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TrainConfigError as e:
        raise TrainConfigError(f"{where}.{e}" if where else str(e)) from e


def _resolve(base: Path, p: str) -> str:
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else str((base / p).resolve())


def load_train_config(path: Union[str, os.PathLike], overrides: Optional[dict] = None) -> TrainConfig:
    """Read a `TrainConfig` from ``.json`` or ``.yaml``/``.yml``; relative data/teacher paths are
    resolved against the file's folder. ``overrides`` (nested mapping) is merged on top."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TrainConfigError(f"{path}: cannot read training config ({e})") from e
    is_yaml = path.suffix in (".yaml", ".yml")
    if is_yaml:
        try:
            import yaml
        except ImportError as e:
            raise TrainConfigError(f"{path}: YAML configs need pyyaml: pip install 'speechtok[train]'") from e
    try:
        raw = yaml.safe_load(text) if is_yaml else json.loads(text)
    except Exception as e:  # noqa: BLE001 - parser errors differ per format
        raise TrainConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'json'} ({e})") from e
    if not isinstance(raw, dict):
        raise TrainConfigError(f"{path}: top level must be a mapping")
    version = raw.get("format_version", CONFIG_FORMAT_VERSION)
    if not isinstance(version, int) or version > CONFIG_FORMAT_VERSION:
        raise TrainConfigError(f"{path}: training config format_version {version!r} is not supported "
                               f"(this speechtok reads <= {CONFIG_FORMAT_VERSION})")
    teacher = _teacher(raw)
    if isinstance(teacher, dict) and teacher.get("trust_pickle"):
        raise TrainConfigError(f"{path}: distill.teacher.trust_pickle: a file cannot allow pickle loading; "
                               "give it on the command line (--set distill.teacher.trust_pickle=true)")
    _resolve_paths(raw, path.resolve().parent)
    cfg = _build(raw, str(path))  # the file on its own must be valid: its errors name the file
    if not overrides:
        return cfg
    overrides = json.loads(json.dumps(overrides))  # paths given on the command line: relative to the cwd
    _resolve_paths(overrides, Path.cwd())
    return _build(merge(raw, overrides), f"{path} with --set {', '.join(_keys(overrides))}")


def _build(raw: dict, source: str) -> TrainConfig:
    try:
        return from_dict(TrainConfig, raw)
    except (TrainConfigError, TypeError) as e:
        raise TrainConfigError(f"{source}: {e}") from e


def _keys(tree: dict, prefix: str = "") -> list[str]:
    """Dotted leaf keys of a nested mapping (the ``--set`` keys, for error messages)."""
    out = []
    for k, v in tree.items():
        out.extend(_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"])
    return out


def with_train_data(cfg: TrainConfig, data: Sequence[str], source: str) -> TrainConfig:
    """``cfg`` with ``data.train`` replaced by ``data`` (command-line paths, made absolute) when
    given; raises naming ``source`` (the config file) when neither gives any training data."""
    if data:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, train=tuple(_resolve(Path.cwd(), str(d)) for d in data)))
    if not cfg.data.train:
        raise TrainConfigError(f"{source}: no training data: pass --data MANIFEST.jsonl or --data AUDIO_DIR "
                               "(repeatable), or set data.train in the config")
    return cfg


def resolve_teacher_path(cfg: TrainConfig) -> TrainConfig:
    """``distill.teacher.path = "whisper:NAME"`` -> the directory of the installed Whisper weights
    (`speechtok.codec.teachers.teacher_source`; a split model is assembled once). `build_teacher`
    resolves such paths itself too; this makes the resolved path visible in the saved config."""
    from ..teachers import teacher_source

    t = cfg.distill.teacher
    if t is None or not (t.path or "").startswith("whisper:"):
        return cfg
    try:
        path = teacher_source(t.path)
    except FileNotFoundError as e:
        raise TrainConfigError(f"distill.teacher.path: {e}") from e
    return cfg.replace(distill=dataclasses.replace(cfg.distill, teacher=dataclasses.replace(t, path=path)))


def _teacher(raw: dict):
    """``raw["distill"]["teacher"]`` of a raw (unchecked) config, None where absent or not a mapping."""
    distill = raw.get("distill")
    return distill.get("teacher") if isinstance(distill, dict) else None


def _resolve_paths(raw: dict, base: Path) -> None:
    """Make ``data.train``/``data.valid`` and the teacher path absolute (relative to ``base``), in place."""
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "valid"):
            if isinstance(data.get(key), list):
                data[key] = [_resolve(base, p) if isinstance(p, str) else p for p in data[key]]
    teacher = _teacher(raw)
    if isinstance(teacher, dict) and isinstance(teacher.get("path"), str) and \
            not teacher["path"].startswith("whisper:"):  # whisper:NAME names installed weights, not a path
        teacher["path"] = _resolve(base, teacher["path"])


def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge (``over`` wins); returns a new dict."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
