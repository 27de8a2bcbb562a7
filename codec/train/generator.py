"""The generator side of a training step: the codec built from a config, plus the distillation head.

`GeneratorStep` holds both so one DDP wrapper synchronises them, and implements Mimi's
"no quantization" rate with the codec's public halves (``encode_latent``, ``quantizer``,
``decode_latent``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import torch

from ..distill import DistillHead


def build_generator(model_cfg: dict, quantizer_options: Optional[dict] = None):
    """The codec (``speechtok.codec.build.build_codec``) from a config mapping, with training-only
    quantizer options (``dropout``, ``decay``, ``dead_code``, ...); returns (model, CodecConfig).
    Architecture options given here (``kind``, ``lookup``, ``codebook_dim``) are moved into the
    codec config (``quantizer.topology``/``lookup``/``lookup_dim``) so an exported model rebuilds."""
    from ..build import build_codec, quantizer_config
    from ..config import config_from_dict
    from ..quantization import QuantizerConfig

    opts = dict(quantizer_options or {})
    # options that change the architecture belong to the codec config (so exported models rebuild)
    arch = {"topology": opts.pop("kind", None), "lookup": opts.pop("lookup", None),
            "lookup_dim": opts.pop("codebook_dim", None)}
    model_cfg = dict(model_cfg or {"preset": "tiny"})
    if any(v is not None for v in arch.values()):
        model_cfg["quantizer"] = {**dict(model_cfg.get("quantizer") or {}),
                                  **{k: v for k, v in arch.items() if v is not None}}
    cfg = config_from_dict(model_cfg)
    base = quantizer_config(cfg)
    qcfg = QuantizerConfig.from_dict({**base.to_dict(), **opts})
    return build_codec(cfg, quantizer=qcfg), cfg


@dataclass(frozen=True, eq=False)
class GeneratorOutput:
    """The generator side of a training step.

    Attributes:
        x: reconstruction ``[B, C, S]``.
        penalty: scalar quantizer loss (or None).
        metrics: quantizer metrics (0-dim tensors).
        semantic_pred: distillation head output ``[B, T, D_teacher]`` or None.
    """

    x: torch.Tensor
    penalty: Optional[torch.Tensor]
    metrics: dict
    semantic_pred: Optional[torch.Tensor]


class GeneratorStep(torch.nn.Module):
    """Codec + distillation head as one module, so one DDP wrapper syncs both.

    With ``quantize_prob < 1`` (Mimi's 50 %) each training item is quantized with that probability
    and otherwise decoded from its continuous latent; this needs the codec's ``encode_latent`` /
    ``quantizer`` / ``decode_latent`` halves.
    """

    def __init__(self, model: torch.nn.Module, head: Optional[DistillHead], quantize_prob: float = 1.0):
        super().__init__()
        self.model, self.head, self.quantize_prob = model, head, float(quantize_prob)
        self._takes_lengths = "lengths" in inspect.signature(model.forward).parameters
        if self.quantize_prob < 1.0 and not all(hasattr(model, a) for a in ("encode_latent", "quantizer",
                                                                             "decode_latent")):
            raise ValueError("quantize_prob < 1 needs a codec with encode_latent/quantizer/decode_latent")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> GeneratorOutput:
        m = self.model
        if self.training and self.quantize_prob < 1.0:
            z = m.encode_latent(x)
            hop = x.shape[-1] // max(1, z.shape[-1])
            mask = torch.arange(z.shape[-1], device=z.device)[None] < ((lengths + hop - 1) // hop)[:, None]
            q = m.quantizer(z, mask)
            keep = torch.rand(z.shape[0], device=z.device) < self.quantize_prob
            y = m.decode_latent(torch.where(keep[:, None, None], q.x, z))
            # no quantized item (autoencoder warm-up): no commitment pull either, or the
            # quantizer's input projection, which then gets no other gradient, shrinks to a point
            penalty = q.penalty if self.quantize_prob > 0 else None
            out = GeneratorOutput(y, penalty, dict(q.metrics), None)
            sem = getattr(q, "semantic", None)
        else:
            o = m(x, lengths=lengths) if self._takes_lengths else m(x)
            out = GeneratorOutput(o.x, getattr(o, "penalty", None), dict(getattr(o, "metrics", None) or {}), None)
            sem = getattr(o, "semantic", None)
        if self.head is not None:
            if sem is None:
                raise ValueError("the generator returned no `semantic` latent [B, D, T] to distill into")
            out = GeneratorOutput(out.x, out.penalty, out.metrics, self.head(sem.transpose(1, 2)))
        return out
