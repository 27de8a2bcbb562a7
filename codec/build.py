"""`build_codec`: the one function from a `CodecConfig` to a `CodecModel`."""
from __future__ import annotations

import dataclasses
from typing import Optional

from .config import CodecConfig
from .model import CodecModel


def quantizer_config(cfg: CodecConfig, **overrides):
    """The `speechtok.codec.quantization.QuantizerConfig` a codec config implies (Mimi's split RVQ
    when ``n_semantic >= 1``, a plain RVQ otherwise); ``overrides`` set training options
    (``decay``, ``dropout``, ``dead_code``, ...)."""
    from .quantization import QuantizerConfig

    q = cfg.quantizer
    base = QuantizerConfig(kind="split" if q.n_semantic > 0 else "rvq", input_dim=cfg.seanet.dimension,
                           dim=q.codebook_dim, n_q=q.n_q, codebook_size=q.codebook_size,
                           n_semantic=q.n_semantic, project=True)
    return dataclasses.replace(base, **overrides) if overrides else base


def build_codec(cfg: CodecConfig, quantizer: Optional[object] = None) -> CodecModel:
    """Build the codec ``cfg`` describes, randomly initialised.

    Args:
        cfg: the architecture.
        quantizer: a `QuantizerConfig` to use instead of `quantizer_config(cfg)` (it must agree
            with ``cfg.quantizer`` on sizes).
    """
    from .quantization import build_quantizer

    qcfg = quantizer if quantizer is not None else quantizer_config(cfg)
    q = cfg.quantizer
    if (qcfg.n_q, qcfg.codebook_size, qcfg.input_dim) != (q.n_q, q.codebook_size, cfg.seanet.dimension):
        raise ValueError(f"quantizer config {qcfg} disagrees with codec config {q} (dimension {cfg.seanet.dimension})")
    return CodecModel(cfg, build_quantizer(qcfg))
