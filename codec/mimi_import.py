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

from .config import CodecConfig, QuantizerSpec, SEANetConfig, TransformerConfig

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


def config_from_hf_mimi(hf: Mapping, name: str = "mimi") -> CodecConfig:
    """`CodecConfig` equivalent to a HF ``MimiConfig`` (as a dict, e.g. parsed ``config.json``)."""
    g = dict(hf)

    def need(key, value, why):
        if g.get(key, value) != value:
            raise MimiImportError(f"unsupported Mimi config: {key}={g.get(key)!r} ({why})")

    need("use_causal_conv", True, "speechtok's codec is causal")
    need("trim_right_ratio", 1.0, "only full right trimming is supported")
    need("hidden_act", "gelu", "the MLP uses exact GELU")
    need("attention_bias", False, "attention has no bias")
    heads = int(g.get("num_attention_heads", 8))
    need("num_key_value_heads", heads, "grouped-query attention is not supported")
    hidden = int(g.get("hidden_size", 512))
    head_dim = g.get("head_dim") or hidden // heads
    if head_dim * heads != hidden:
        raise MimiImportError(f"unsupported Mimi config: head_dim={head_dim} x heads={heads} != hidden_size={hidden}")
    ratios = tuple(int(r) for r in (g.get("upsampling_ratios") or (8, 6, 5, 4)))
    sr = int(g.get("sampling_rate", 24000))
    hop = math.prod(ratios)
    frame_rate = g.get("_frame_rate") or g.get("frame_rate") or sr / (hop * 2)
    stride = int(math.ceil(sr / hop) / frame_rate)
    rope = g.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta", g.get("rope_theta", 10000.0)))
    if rope.get("rope_type", "default") != "default":
        raise MimiImportError(f"unsupported Mimi config: rope_type={rope.get('rope_type')!r}")
    vq_dim = int(g.get("vector_quantization_hidden_dimension", 256))
    cb_dim = g.get("codebook_dim", 256)  # MimiConfig's default; None means hidden_size
    cb_dim = int(hidden if cb_dim is None else cb_dim)
    if cb_dim != vq_dim:
        raise MimiImportError(f"unsupported Mimi config: codebook_dim={cb_dim} != vector_quantization_hidden_dimension={vq_dim}")
    return CodecConfig(
        name=name, sample_rate=sr,
        seanet=SEANetConfig(
            channels=int(g.get("audio_channels", 1)), dimension=hidden, n_filters=int(g.get("num_filters", 64)),
            ratios=ratios, kernel_size=int(g.get("kernel_size", 7)), last_kernel_size=int(g.get("last_kernel_size", 3)),
            residual_kernel_size=int(g.get("residual_kernel_size", 3)),
            n_residual_layers=int(g.get("num_residual_layers", 1)), dilation_base=int(g.get("dilation_growth_rate", 2)),
            compress=int(g.get("compress", 2)), pad_mode=str(g.get("pad_mode", "constant")),
            true_skip=not bool(g.get("use_conv_shortcut", False))),
        transformer=TransformerConfig(
            d_model=hidden, num_heads=heads, num_layers=int(g.get("num_hidden_layers", 8)),
            dim_feedforward=int(g.get("intermediate_size", 2048)), context=int(g.get("sliding_window", 250)),
            max_period=theta, layer_scale=g.get("layer_scale_initial_scale", 0.01),
            norm_eps=float(g.get("norm_eps", 1e-5))),
        quantizer=QuantizerSpec(n_q=int(g.get("num_quantizers", 32)), n_semantic=int(g.get("num_semantic_quantizers", 1)),
                                codebook_size=int(g.get("codebook_size", 2048)), codebook_dim=vq_dim),
        frame_stride=stride, upsample_groups=int(g.get("upsample_groups", hidden)),
    )


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
        hf_cfg = json.loads((directory / "config.json").read_text())
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
