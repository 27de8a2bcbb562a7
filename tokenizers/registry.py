"""`speechtok.load`: the one entry point from a name or a directory to a tokenizer.

A saved model is a directory holding ``config.json`` (self-describing, versioned) and, for models
with weights, ``model.safetensors``. Built-in models are such directories shipped inside the
package (``speechtok/models/<name>/``). Hugging Face Mimi directories (``config.json`` with
``"model_type": "mimi"``) load through the codec's importer. No pickle anywhere.

``config.json``::

    {"format": "speechtok.model", "format_version": 1, "kind": "<loader kind>",
     "name": "<model name>", "config": {...}, "speechtok_version": "x.y.z"}
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .formats import check_format, read_json

MODEL_FORMAT = "speechtok.model"
MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BUILTIN_DIR = Path(__file__).resolve().parent / "models"

# kind -> "module:function(directory: Path, meta: dict, device) -> tokenizer"; imported lazily
_LOADERS: dict[str, str] = {
    "mulaw": "speechtok.mulaw:load_mulaw",
    "codec": "speechtok.codec.tokenizer:load_codec_dir",
    "hf-mimi": "speechtok.codec.mimi_import:load_hf_mimi_dir",
    "units": "speechtok.units.tokenizer:load_units_dir",
}


class ModelLoadError(RuntimeError):
    """A model name or directory cannot be loaded (names the path and the problem)."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside the package."""

    name: str
    description: str

    @property
    def path(self) -> Path:
        return BUILTIN_DIR / self.name


# The built-in registry is data: name -> shipped directory. DEFAULT_MODEL is what load() and
# the CLI use when no model is named.
BUILTINS: dict[str, BuiltinModel] = {
    "speechtok-16k-50hz": BuiltinModel("speechtok-16k-50hz", "streaming causal codec, 16 kHz, 50 Hz, 8 x 1024 "
                                                             "codebooks (0.5-4 kbit/s), semantic codebook "
                                                             "distilled from Whisper-base; CPU-trained"),
    "mulaw-16k": BuiltinModel("mulaw-16k", "8-bit mu-law at 16 kHz (128 kbit/s): a weightless "
                                           "reference tokenizer, one codebook of 256 (no neural codec)"),
    "units-mfcc500-16k": BuiltinModel("units-mfcc500-16k", "MFCC k-means units (K=500, 100 Hz, 0.9 kbit/s) "
                                                           "with a unit vocoder; needs no pretrained weights"),
    "units-whisper-tiny-l3-km500": BuiltinModel(
        "units-whisper-tiny-l3-km500", "Whisper tiny.en layer-3 k-means units (K=500, 50 Hz, 0.45 kbit/s; "
                                       "~0.26 kbit/s deduped) with a unit vocoder; the encoder ships inside"),
}
# The default: the codec trained by the codec-training issue (model card in its directory).
DEFAULT_MODEL: Optional[str] = "speechtok-16k-50hz"
# The units default (`load("units")`): the built-in units with the most phone information on
# held-out real speech (benchmarks/results/units_whisper/).
UNITS_ALIAS = "units"
DEFAULT_UNITS_MODEL: str = "units-whisper-tiny-l3-km500"


def register_loader(kind: str, target: str) -> None:
    """Register ``"module:function"`` as the loader for model directories of ``kind``."""
    _LOADERS[kind] = target


def register_builtin(model: BuiltinModel, default: bool = False) -> None:
    global DEFAULT_MODEL
    BUILTINS[model.name] = model
    if default:
        DEFAULT_MODEL = model.name


def models() -> list[BuiltinModel]:
    """The built-in models, default first."""
    return sorted(BUILTINS.values(), key=lambda m: (m.name != DEFAULT_MODEL, m.name))


def file_sha256(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def config_sha256(config: dict) -> str:
    """Hash of a JSON config (for weightless models, the config *is* the model)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _resolve_loader(kind: str) -> Callable[..., Any]:
    if kind not in _LOADERS:
        raise ModelLoadError(f"unknown model kind {kind!r}; known kinds: {sorted(_LOADERS)}")
    module, func = _LOADERS[kind].split(":")
    return getattr(importlib.import_module(module), func)


def read_model_config(directory: Path) -> dict:
    """Read and check ``config.json`` of a model directory; returns the parsed dict."""
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelLoadError(f"{directory}: not a model directory (no {CONFIG_FILE})")
    meta = read_json(cfg_path, ModelLoadError, "model config")
    if isinstance(meta, dict) and meta.get("model_type") == "mimi":  # a Hugging Face MimiModel directory
        return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "kind": "hf-mimi",
                "name": directory.name, "config": meta}
    return check_format(meta, cfg_path, MODEL_FORMAT, MODEL_FORMAT_VERSION, ModelLoadError, "model config")


def load(name_or_path: Optional[Union[str, os.PathLike]] = None, device: str = "cpu", *,
         encoder_only: bool = False):
    """Load a tokenizer from a built-in name or a model directory.

    Args:
        name_or_path: a name from `models()` (default: `DEFAULT_MODEL`; ``"units"``:
            `DEFAULT_UNITS_MODEL`), a directory with
            ``config.json`` (+ ``model.safetensors``), including Hugging Face Mimi directories, or
            kyutai moshi's Mimi weights file (``tokenizer-e351c8d8-checkpoint125.safetensors``).
        device: torch device for the model.
        encoder_only: for encode-only work (dataset preprocessing): skip reading the weights only
            decoding needs, where the model kind supports it (codecs: the decoder, about 40% of
            Mimi's memory). ``model_id`` is unchanged; ``decode`` then raises.
    """
    if name_or_path is None:
        if DEFAULT_MODEL is None:
            raise ModelLoadError("no default model ships with this speechtok build yet; name one: "
                                 f"built-ins: {sorted(BUILTINS)}, or a model directory")
        name_or_path = DEFAULT_MODEL
    key = str(name_or_path)
    if key == UNITS_ALIAS:
        key = DEFAULT_UNITS_MODEL
    if key in BUILTINS:
        directory = BUILTINS[key].path
    else:
        directory = Path(os.path.expanduser(key))
        if not directory.exists():
            raise ModelLoadError(f"no built-in model or directory named {key!r}; "
                                 f"built-ins: {sorted(BUILTINS)}")
        if directory.is_file():
            return _load_file(directory, device, encoder_only)
    meta = read_model_config(directory)
    loader = _resolve_loader(meta["kind"])
    if encoder_only and "encoder_only" in inspect.signature(loader).parameters:
        return loader(directory, meta, device, encoder_only=True)
    return loader(directory, meta, device)


def _load_file(path: Path, device: str, encoder_only: bool = False):
    """A single weights file: kyutai moshi's Mimi checkpoint (``tokenizer-*.safetensors``)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                names = set(f.keys())
        except Exception as e:  # safetensors' own errors
            raise ModelLoadError(f"{path}: unreadable safetensors file ({e})") from e
        if {"encoder.model.0.conv.conv.weight", "quantizer.rvq_first.input_proj.weight"} <= names:
            from speechtok.codec.moshi_import import load_moshi_mimi

            return load_moshi_mimi(path, device, encoder_only=encoder_only)
        raise ModelLoadError(f"{path}: a safetensors file that is not a kyutai moshi Mimi checkpoint; other "
                             "models load from their directory (config.json + model.safetensors)")
    raise ModelLoadError(f"{path}: expected a model directory (config.json + model.safetensors) or a moshi "
                         "Mimi .safetensors file, got another file")


def save_model_dir(directory: Union[str, os.PathLike], kind: str, name: str, config: dict,
                   state_dict: Optional[dict] = None) -> Path:
    """Write a model directory atomically (temp dir, then rename). Returns its path."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    from . import __version__

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; a model directory gets the usual permissions
    try:
        meta = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "kind": kind, "name": name,
                "config": config, "speechtok_version": __version__}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if state_dict is not None:
            tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
            # one metadata key: safetensors stores metadata as a hash map, so several keys would make
            # the bytes (and file_sha256) differ from save to save
            save_file(tensors, str(tmp / WEIGHTS_FILE),
                      metadata={"speechtok": json.dumps({"format": MODEL_FORMAT, "name": name}, sort_keys=True)})
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_weights(directory: Path, device: str = "cpu") -> tuple[dict, str]:
    """Load ``model.safetensors`` of a model directory: (state_dict, sha256 of the file)."""
    from safetensors.torch import load_file

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"{directory}: missing weights file, expected {path}")
    try:
        return load_file(str(path), device=str(device)), file_sha256(path)
    except Exception as e:  # safetensors raises its own error types
        raise ModelLoadError(f"{path}: unreadable weights ({e})") from e
