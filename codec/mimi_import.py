"""Import Mimi weights: Hugging Face ``transformers`` ``MimiModel`` directories into `CodecModel`.

``speechtok.load("path/to/kyutai-mimi")`` works on a directory downloaded from the Hub
(``config.json`` with ``"model_type": "mimi"`` + ``model.safetensors``, or sharded safetensors with
``model.safetensors.index.json``): the registry routes it here (kind ``"hf-mimi"``).

Both HF namings are read: the checkpoint naming (``encoder.layers.*``, ``encoder_transformer.*``,
``downsample.*``, ``upsample.*``, ``decoder.layers.*``, ``decoder_transformer.*``, what
``save_pretrained`` writes) and the in-memory naming of transformers >= 5 (``encoder.encoder_seanet.*``,
``encoder.encoder_transformer.*``, ``decoder.decoder_seanet.*``, ...).

Mapping to speechtok names: SEANet/resampling names are identical; attention
``q_proj``/``k_proj``/``v_proj`` stack into ``in_proj`` and ``o_proj`` becomes ``out_proj``;
``quantizer.{semantic,acoustic}_residual_vector_quantizer`` become ``quantizer.{semantic,acoustic}_rvq``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping

import torch

from speechtok.formats import MAX_SAMPLE_RATE, read_json, safe_text

from .config import MAX_RATIO, CodecConfig, CodecConfigError, QuantizerSpec, SEANetConfig, TransformerConfig, \
    is_number

_RENAMES_V5 = [  # transformers >= 5 in-memory names -> checkpoint names
    (r"^encoder\.encoder_seanet\.", "encoder."),
    (r"^encoder\.encoder_transformer\.", "encoder_transformer."),
    (r"^encoder\.downsample\.", "downsample."),
    (r"^decoder\.decoder_seanet\.", "decoder."),
    (r"^decoder\.decoder_transformer\.", "decoder_transformer."),
    (r"^decoder\.upsample\.", "upsample."),
]


class MimiImportError(ValueError):
    """A Mimi checkpoint or config cannot be mapped (names the file and the problem)."""


# HF MimiConfig keys behind speechtok config keys (to name the file's key in errors).
_HF_KEYS = {
    "sample_rate": "sampling_rate", "frame_stride": "frame_rate", "upsample_groups": "upsample_groups",
    "seanet.channels": "audio_channels", "seanet.dimension": "hidden_size", "seanet.n_filters": "num_filters",
    "seanet.ratios": "upsampling_ratios", "seanet.kernel_size": "kernel_size",
    "seanet.last_kernel_size": "last_kernel_size", "seanet.residual_kernel_size": "residual_kernel_size",
    "seanet.n_residual_layers": "num_residual_layers", "seanet.dilation_base": "dilation_growth_rate",
    "seanet.compress": "compress", "seanet.pad_mode": "pad_mode", "transformer.d_model": "hidden_size",
    "transformer.num_heads": "num_attention_heads", "transformer.num_layers": "num_hidden_layers",
    "transformer.dim_feedforward": "intermediate_size", "transformer.context": "sliding_window",
    "transformer.max_period": "rope_theta", "transformer.layer_scale": "layer_scale_initial_scale",
    "transformer.norm_eps": "norm_eps", "quantizer.n_q": "num_quantizers",
    "quantizer.n_semantic": "num_semantic_quantizers", "quantizer.codebook_size": "codebook_size",
    "quantizer.codebook_dim": "vector_quantization_hidden_dimension",
}


def _get(g: Mapping, key: str, kind, default, allow_none: bool = False):
    """``g[key]`` (``default`` if absent) checked for type (bools are not numbers), for the values
    used before `CodecConfig` checks them (it checks the types and ranges of the rest)."""
    value = g.get(key, default)
    if value is None and allow_none:
        return None
    if kind is float:
        ok = is_number(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise MimiImportError(f"Mimi config {key!r} must be {'a number' if kind is float else kind.__name__}, "
                              f"got {safe_text(repr(value), 60)}")
    return value


def config_from_hf_mimi(hf: Mapping, name: str = "mimi") -> CodecConfig:
    """`CodecConfig` equivalent to a HF ``MimiConfig`` (as a dict, e.g. parsed ``config.json``).

    Every value used is checked for type and range (`CodecConfig`'s bounds) before anything is
    built; raises `MimiImportError` naming the HF key."""
    if not isinstance(hf, Mapping):
        raise MimiImportError(f"Mimi config must be a JSON object, got {type(hf).__name__}")
    g = dict(hf)

    def need(key, value, why):
        if g.get(key, value) != value:
            raise MimiImportError(f"unsupported Mimi config: {key}={safe_text(repr(g.get(key)), 60)} ({why})")

    need("use_causal_conv", True, "speechtok's codec is causal")
    need("trim_right_ratio", 1.0, "only full right trimming is supported")
    need("hidden_act", "gelu", "the MLP uses exact GELU")
    need("attention_bias", False, "attention has no bias")
    heads = _get(g, "num_attention_heads", int, 8)
    need("num_key_value_heads", heads, "grouped-query attention is not supported")
    hidden = _get(g, "hidden_size", int, 512)
    if not 1 <= heads <= hidden:
        raise MimiImportError(f"Mimi config num_attention_heads={heads} is out of range [1, hidden_size={hidden}]")
    head_dim = _get(g, "head_dim", int, None, allow_none=True) or hidden // heads
    if head_dim * heads != hidden:
        raise MimiImportError(f"unsupported Mimi config: head_dim={head_dim} x heads={heads} != hidden_size={hidden}")
    ratios = _get(g, "upsampling_ratios", list, None, allow_none=True) or [8, 6, 5, 4]
    sr = _get(g, "sampling_rate", int, 24000)
    if not 1 <= sr <= MAX_SAMPLE_RATE:
        raise MimiImportError(f"Mimi config sampling_rate={sr} is out of range [1, {MAX_SAMPLE_RATE}]")
    rope = _get(g, "rope_parameters", dict, None, allow_none=True) or {}
    theta = _get(rope, "rope_theta", float, _get(g, "rope_theta", float, 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise MimiImportError(f"unsupported Mimi config: rope_type={safe_text(repr(rope.get('rope_type')), 60)}")
    vq_dim = _get(g, "vector_quantization_hidden_dimension", int, 256)
    cb_dim = _get(g, "codebook_dim", int, 256, allow_none=True)  # MimiConfig's default; None means hidden_size
    cb_dim = hidden if cb_dim is None else cb_dim
    if cb_dim != vq_dim:
        raise MimiImportError(f"unsupported Mimi config: codebook_dim={cb_dim} != vector_quantization_hidden_dimension={vq_dim}")
    try:  # the values passed on as they are: CodecConfig checks them, the error is mapped to the HF key
        seanet = SEANetConfig(
            channels=g.get("audio_channels", 1), dimension=hidden, n_filters=g.get("num_filters", 64),
            ratios=tuple(ratios), kernel_size=g.get("kernel_size", 7), last_kernel_size=g.get("last_kernel_size", 3),
            residual_kernel_size=g.get("residual_kernel_size", 3), n_residual_layers=g.get("num_residual_layers", 1),
            dilation_base=g.get("dilation_growth_rate", 2), compress=g.get("compress", 2),
            pad_mode=g.get("pad_mode", "constant"), true_skip=not _get(g, "use_conv_shortcut", bool, False))
        frame_rate = next((g[k] for k in ("_frame_rate", "frame_rate") if g.get(k) is not None),
                          sr / (seanet.hop_length * 2))
        if not is_number(frame_rate) or not 0 < frame_rate <= sr:
            raise MimiImportError(f"Mimi config 'frame_rate' must be a number in (0, sampling_rate], "
                                  f"got {safe_text(repr(frame_rate), 60)}")
        # capped: an absurdly low rate fails CodecConfig's frame_stride bound, not int(inf)
        stride = int(min(math.ceil(sr / seanet.hop_length) / frame_rate, MAX_RATIO + 1))
        return CodecConfig(
            name=name, sample_rate=sr, seanet=seanet,
            transformer=TransformerConfig(
                d_model=hidden, num_heads=heads, num_layers=g.get("num_hidden_layers", 8),
                dim_feedforward=g.get("intermediate_size", 2048), context=g.get("sliding_window", 250),
                max_period=float(theta), layer_scale=g.get("layer_scale_initial_scale", 0.01),
                norm_eps=float(_get(g, "norm_eps", float, 1e-5))),
            quantizer=QuantizerSpec(n_q=g.get("num_quantizers", 32), n_semantic=g.get("num_semantic_quantizers", 1),
                                    codebook_size=g.get("codebook_size", 2048), codebook_dim=vq_dim),
            frame_stride=stride, upsample_groups=_get(g, "upsample_groups", int, hidden),
        )
    except CodecConfigError as e:
        raise MimiImportError(f"Mimi config {_HF_KEYS.get(e.key, 'config')!r}: {e}") from e


def convert_hf_mimi_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``MimiModel`` state dict (either naming) -> `CodecModel` state dict (float32)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[int, torch.Tensor]] = {}
    for name, value in state.items():
        value = value.float() if value.is_floating_point() else value
        target, rows = hf_name_to_speechtok(name, int(value.shape[0]))
        if rows is None:
            out[target] = value
        else:
            qkv.setdefault(target, {})[rows.start // value.shape[0]] = value
    for target, parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise MimiImportError(f"{target}: q/k/v projections incomplete")
        out[target] = torch.cat([parts[i] for i in range(3)], dim=0)
    return out


def _weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            return [directory / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (OSError, ValueError, KeyError) as e:
            raise MimiImportError(f"{index}: unreadable index ({e})") from e
    if any(directory.glob("*.bin")):
        raise MimiImportError(f"{directory}: only pickle weights (*.bin) found; speechtok reads safetensors only "
                              "(re-save with save_pretrained(..., safe_serialization=True))")
    raise MimiImportError(f"{directory}: missing weights, expected {single} (or {index})")


def hf_name_to_speechtok(name: str, d_model: int) -> tuple[str, slice | None]:
    """One HF Mimi weight name -> (speechtok state-dict name, rows of it) (q/k/v land in
    thirds of ``in_proj``)."""
    for pat, rep in _RENAMES_V5:
        name = re.sub(pat, rep, name)
    name = name.replace("quantizer.semantic_residual_vector_quantizer.", "quantizer.semantic_rvq.")
    name = name.replace("quantizer.acoustic_residual_vector_quantizer.", "quantizer.acoustic_rvq.")
    name = name.replace(".self_attn.o_proj.", ".self_attn.out_proj.")
    m = re.match(r"^(.*\.self_attn)\.([qkv])_proj\.weight$", name)
    if m:
        i = "qkv".index(m.group(2))
        return f"{m.group(1)}.in_proj.weight", slice(i * d_model, (i + 1) * d_model)
    return name, None


def load_hf_mimi_dir(directory, meta: dict | None = None, device: str = "cpu", encoder_only: bool = False):
    """Registry loader (kind ``"hf-mimi"``): a HF Mimi directory -> `CodecTokenizer` named ``mimi``.

    Weights are copied into the model one tensor at a time (peak memory: one model);
    ``encoder_only`` skips the decoder's (about 40% of Mimi's weights)."""
    from .tokenizer import load_codec_weights

    directory = Path(directory)
    hf_cfg = (meta or {}).get("config")
    if hf_cfg is None:
        hf_cfg = read_json(directory / "config.json", MimiImportError, "Mimi config")
    try:
        cfg = config_from_hf_mimi(hf_cfg)
    except MimiImportError as e:
        raise MimiImportError(f"{directory / 'config.json'}: {e}") from e
    files = _weight_files(directory)
    try:
        return load_codec_weights(cfg, files, lambda n: hf_name_to_speechtok(n, cfg.seanet.dimension), "mimi",
                                  device, encoder_only)
    except ValueError as e:
        raise MimiImportError(f"{directory}: weights do not match the Mimi config: {e}") from e
