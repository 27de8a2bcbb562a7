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
    kind = q.topology or ("split" if q.n_semantic > 0 else "rvq")
    base = QuantizerConfig(kind=kind, input_dim=cfg.seanet.dimension, dim=q.codebook_dim, n_q=q.n_q,
                           codebook_size=q.codebook_size, n_semantic=q.n_semantic, project=True,
                           lookup=q.lookup, codebook_dim=q.lookup_dim)
    return dataclasses.replace(base, **overrides) if overrides else base


def build_codec(cfg: CodecConfig, quantizer: Optional[object] = None, decoder: bool = True) -> CodecModel:
    """Build the codec ``cfg`` describes, randomly initialised.

    Args:
        cfg: the architecture.
        quantizer: a `QuantizerConfig` to use instead of `quantizer_config(cfg)` (it must agree
            with ``cfg.quantizer`` on sizes).
        decoder: False builds the decoder half on the meta device (no memory; encode-only use).
    """
    from .quantization import build_quantizer

    qcfg = quantizer if quantizer is not None else quantizer_config(cfg)
    q = cfg.quantizer
    want = quantizer_config(cfg)
    if (qcfg.kind, qcfg.n_q, qcfg.n_semantic, qcfg.codebook_size, qcfg.input_dim, qcfg.lookup, qcfg.codebook_dim) != \
            (want.kind, want.n_q, want.n_semantic, want.codebook_size, want.input_dim, want.lookup, want.codebook_dim):
        raise ValueError(f"quantizer config {qcfg} disagrees with codec config {q} (dimension {cfg.seanet.dimension})")
    return CodecModel(cfg, build_quantizer(qcfg), decoder=decoder)
