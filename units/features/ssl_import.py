"""Importers of HuBERT / WavLM / wav2vec2 checkpoints into `SSLExtractor` (no fairseq needed).

`load_hf_ssl`: a Hugging Face directory (``config.json`` + weights, read with ``transformers`` and
converted by torchaudio's ``import_huggingface_model``). `load_fairseq_ssl`: a fairseq ``.pt`` (a
pickle: only with ``trust_pickle=True``), converted with torchaudio's fairseq key map. ``layer``
follows `LAYER_CONVENTION`; None reads the last block. `SSLExtractor.load` picks between them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from speechtok.formats import read_json, safe_text

from .base import FeatureError
from .ssl import SSL_KINDS, SSLConfig, SSLExtractor, build_ssl_extractor


def hf_model_type(directory) -> str:
    """The ``model_type`` of a Hugging Face model directory's ``config.json``."""
    cfg_path = Path(directory) / "config.json"
    if not cfg_path.is_file():
        raise FeatureError(f"{directory}: not a Hugging Face model directory (no config.json)")
    cfg = read_json(cfg_path, FeatureError, "Hugging Face model config")
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if not isinstance(model_type, str):
        raise FeatureError(f"{cfg_path}: no 'model_type' string")
    return model_type


def _check_kind(kind: Optional[str], found: str, where) -> str:
    if found not in SSL_KINDS:
        raise FeatureError(f"{where}: model_type {safe_text(repr(found), 40)} is not one of {list(SSL_KINDS)}")
    if kind is not None and kind != found:
        raise FeatureError(f"{where}: a {found} model, not {kind}; load it as kind {found!r}")
    return found


def load_hf_ssl(directory, layer: Optional[int] = None, kind: Optional[str] = None, **options) -> SSLExtractor:
    """A Hugging Face HubertModel/WavLMModel/Wav2Vec2Model directory -> `SSLExtractor` at ``layer``
    (None: the last); ``kind``, when given, must be the directory's ``model_type``.

    Needs ``transformers`` (``pip install 'speechtok[ssl]'``); safetensors weights need no pickle.
    """
    directory = Path(directory)
    kind = _check_kind(kind, hf_model_type(directory), directory / "config.json")
    try:
        import transformers
    except ImportError as e:  # pragma: no cover
        raise ImportError("loading Hugging Face SSL checkpoints needs `transformers` "
                          "(pip install 'speechtok[ssl]')") from e
    from torchaudio.models.wav2vec2.utils import import_huggingface_model
    from torchaudio.models.wav2vec2.utils.import_huggingface import _get_config, _get_config_wavlm

    hf = transformers.AutoModel.from_pretrained(str(directory), use_safetensors=None, local_files_only=True).eval()
    arch = (_get_config_wavlm if kind == "wavlm" else _get_config)(hf.config)
    do_norm = bool(getattr(hf.config, "do_stable_layer_norm", False))
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        do_norm = bool(read_json(pre, FeatureError, "preprocessor config").get("do_normalize", do_norm))
    import logging

    logging.getLogger("torchaudio.models.wav2vec2.utils.import_huggingface").setLevel(logging.ERROR)
    model = import_huggingface_model(hf)
    config = SSLConfig(kind=kind, layer=int(arch["encoder_num_layers"]) if layer is None else layer, arch=arch,
                       normalize_audio=options.pop("normalize_audio", do_norm), **options)
    return SSLExtractor(config, model)


_FAIRSEQ_ARCH = {  # fairseq model cfg name -> torchaudio kwarg
    "encoder_embed_dim": "encoder_embed_dim", "encoder_layers": "encoder_num_layers",
    "encoder_attention_heads": "encoder_num_heads", "encoder_ffn_embed_dim": "encoder_ff_interm_features",
    "conv_pos": "encoder_pos_conv_kernel", "conv_pos_groups": "encoder_pos_conv_groups",
    "layer_norm_first": "encoder_layer_norm_first", "conv_bias": "extractor_conv_bias",
}


def _conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's ``conv_feature_layers`` ("[(512,10,5)] + [(512,3,2)] * 4 + ...") without eval."""
    import ast

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        raise FeatureError(f"unsupported conv_feature_layers expression: {spec!r}")

    return [tuple(int(v) for v in t) for t in ev(ast.parse(spec, mode="eval"))]


def load_fairseq_ssl(path, layer: Optional[int] = None, kind: str = "hubert", trust_pickle: bool = False,
                     **options) -> SSLExtractor:
    """A fairseq HuBERT/wav2vec2 ``.pt`` checkpoint -> `SSLExtractor` (no fairseq needed).

    The file is a pickle: loading it can run arbitrary code, so it is refused unless
    ``trust_pickle=True`` (``--trust-pickle``). Convert once and keep the safetensors result.
    """
    path = Path(path)
    if not trust_pickle:
        raise FeatureError(f"{path}: fairseq checkpoints are pickles and can run code when loaded; "
                           "pass trust_pickle=True (--trust-pickle) if you trust this file")
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    cfg = ckpt.get("cfg") or {}
    mcfg = dict(cfg["model"]) if "model" in cfg else vars(ckpt.get("args", object()))
    task = dict(cfg["task"]) if "task" in cfg else {}
    if not mcfg:
        raise FeatureError(f"{path}: no model config (cfg.model or args) in the checkpoint")
    arch = {v: mcfg[k] for k, v in _FAIRSEQ_ARCH.items() if k in mcfg}
    arch.update(
        extractor_mode="layer_norm" if mcfg.get("extractor_mode") == "layer_norm" else "group_norm",
        extractor_conv_layer_config=_conv_layers(mcfg.get("conv_feature_layers",
                                                          "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")),
        encoder_projection_dropout=0.0, encoder_attention_dropout=0.0, encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0, encoder_layer_drop=0.0)
    arch.setdefault("extractor_conv_bias", False)
    for k, d in (("encoder_embed_dim", 768), ("encoder_num_layers", 12), ("encoder_num_heads", 12),
                 ("encoder_ff_interm_features", 3072), ("encoder_pos_conv_kernel", 128),
                 ("encoder_pos_conv_groups", 16), ("encoder_layer_norm_first", False)):
        arch.setdefault(k, d)
    if kind == "wavlm":
        raise FeatureError(f"{path}: fairseq-format WavLM checkpoints are not supported; use the HF directory")
    state = _convert_state_dict(ckpt["model"])
    for old, new in (("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1")):
        key = f"encoder.transformer.pos_conv_embed.conv.{old}"  # fairseq weight_norm -> torch parametrizations
        if key in state:
            state[key.replace(old, new)] = state.pop(key)
    config = SSLConfig(kind=kind, layer=int(arch["encoder_num_layers"]) if layer is None else layer, arch=arch,
                       normalize_audio=options.pop("normalize_audio", bool(task.get("normalize", False))), **options)
    return build_ssl_extractor(config, state)
