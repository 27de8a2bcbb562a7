"""Import Mimi weights in kyutai ``moshi`` naming (e.g. ``tokenizer-e351c8d8-checkpoint125.safetensors``).

    tok = load_moshi_mimi("tokenizer-e351c8d8-checkpoint125.safetensors")   # a CodecTokenizer

Name mapping (moshi -> speechtok): ``{encoder,decoder}.model.{i}`` -> ``.layers.{i}``;
``conv.conv`` / ``convtr.convtr`` -> ``conv``; ``{down,up}sample.conv.conv.conv`` /
``upsample.convtr.convtr.convtr`` -> ``{down,up}sample.conv``; transformer ``transformer.layers.{l}``
``norm1/norm2/linear1/linear2/layer_scale_1/layer_scale_2`` -> ``input_layernorm/post_attention_layernorm/
mlp.fc1/mlp.fc2/self_attn_layer_scale/mlp_layer_scale``; ``self_attn.in_projs.0`` (or ``in_proj_weight``)
-> ``self_attn.in_proj`` with the q and k rows of every head permuted from moshi's interleaved RoPE
pairs to the ``rotate_half`` layout; ``quantizer.rvq_first``/``rvq_rest`` -> ``semantic_rvq``/
``acoustic_rvq``, ``vq.layers.{i}._codebook.{embedding_sum,_initialized}`` -> ``layers.{i}.codebook.
{embed_sum,initialized}``.

moshi itself pins ``torch<2.10`` so it is not a dependency; the mapping was checked against moshi
0.2.13's ``MimiModel`` (random weights, identical codes) and the test runs where moshi imports.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from .config import CodecConfig, preset

_RULES = [
    (r"^(encoder|decoder)\.model\.", r"\1.layers."),
    (r"\.convtr\.convtr\.convtr\.", ".conv."),
    (r"\.conv\.conv\.conv\.", ".conv."),
    (r"\.convtr\.convtr\.", ".conv."),
    (r"\.conv\.conv\.", ".conv."),
    (r"^(encoder|decoder)_transformer\.transformer\.layers\.", r"\1_transformer.layers."),
    (r"\.norm1\.", ".input_layernorm."),
    (r"\.norm2\.", ".post_attention_layernorm."),
    (r"\.linear1\.", ".mlp.fc1."),
    (r"\.linear2\.", ".mlp.fc2."),
    (r"\.layer_scale_1\.", ".self_attn_layer_scale."),
    (r"\.layer_scale_2\.", ".mlp_layer_scale."),
    (r"\.self_attn\.in_projs\.0\.weight$", ".self_attn.in_proj.weight"),
    (r"\.self_attn\.in_proj_weight$", ".self_attn.in_proj.weight"),
    (r"\.self_attn\.out_projs\.0\.weight$", ".self_attn.out_proj.weight"),
    (r"^quantizer\.rvq_first\.", "quantizer.semantic_rvq."),
    (r"^quantizer\.rvq_rest\.", "quantizer.acoustic_rvq."),
    (r"\.vq\.layers\.(\d+)\._codebook\.embedding_sum$", r".layers.\1.codebook.embed_sum"),
    (r"\.vq\.layers\.(\d+)\._codebook\._initialized$", r".layers.\1.codebook.initialized"),
    (r"\.vq\.layers\.(\d+)\._codebook\.cluster_usage$", r".layers.\1.codebook.cluster_usage"),
]


def _interleaved_to_half(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rows ``[D, D_in]`` of q or k: per head, interleaved pairs (moshi) -> halves (HF/speechtok)."""
    d, d_in = w.shape
    return w.view(num_heads, d // num_heads // 2, 2, d_in).transpose(1, 2).reshape(d, d_in)


def convert_moshi_mimi_state_dict(state: Mapping[str, torch.Tensor], num_heads: int = 8) -> dict[str, torch.Tensor]:
    """moshi ``MimiModel`` state dict -> `CodecModel` state dict (float32)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        key = name
        for pat, rep in _RULES:
            key = re.sub(pat, rep, key)
        value = value.float() if value.is_floating_point() else value
        if key.endswith(".self_attn.in_proj.weight"):
            q, k, v = value.chunk(3, dim=0)
            value = torch.cat([_interleaved_to_half(q, num_heads), _interleaved_to_half(k, num_heads), v], dim=0)
        out[key] = value.contiguous()
    return out


def load_moshi_mimi(path: Union[str, Path], device: str = "cpu", cfg: Optional[CodecConfig] = None,
                    encoder_only: bool = False):
    """A moshi Mimi safetensors file -> `CodecTokenizer` named ``mimi`` (config: the ``mimi`` preset).

    ``encoder_only``: the decoder stays on the meta device (no memory once loaded); ``model_id``
    is the full model's (hashed from the converted weights before the decoder's are dropped)."""
    from safetensors.torch import load_file

    from speechtok.registry import ModelLoadError

    from .build import build_codec
    from .tokenizer import CodecTokenizer, model_to, state_dict_sha256

    path = Path(path)
    cfg = cfg or preset("mimi")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors' own errors
        raise ModelLoadError(f"{path}: unreadable moshi Mimi weights ({e})") from e
    model = build_codec(cfg, decoder=not encoder_only)
    converted = convert_moshi_mimi_state_dict(state, cfg.transformer.num_heads)
    del state
    try:
        model.load_state_dict(converted, strict=True)  # meta (decoder) targets take no copy
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: not a moshi Mimi checkpoint for config {cfg.name!r} ({e})") from e
    weights_hash = state_dict_sha256(converted) if encoder_only else None
    del converted
    return CodecTokenizer(model_to(model, device).eval(), name="mimi", weights_hash=weights_hash)
