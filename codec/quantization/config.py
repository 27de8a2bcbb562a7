"""`QuantizerConfig` (frozen, JSON-able) and the one builder `build_quantizer`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Optional, Union

from .policy import DeadCodePolicy, KMeansInit
from .residual import ResidualVQ, SplitResidualVQ
from .vq import VectorQuantizer

Quantizer = Union[VectorQuantizer, ResidualVQ, SplitResidualVQ]


@dataclass(frozen=True)
class QuantizerConfig:
    """Everything that defines a quantizer.

    Attributes:
        kind: ``"vq"`` (one codebook, ``input_dim`` only), ``"rvq"`` (:class:`ResidualVQ`;
            ``n_semantic > 0`` gives SpeechTokenizer's topology) or ``"split"``
            (:class:`SplitResidualVQ`, Mimi).
        input_dim: channels of the latent ``[B, input_dim, T]``.
        dim: channels the codebooks quantize (projections when it differs, always for split).
        n_q: codebooks in total.
        codebook_size: codes per codebook.
        n_semantic: leading semantic codebooks (split: >= 1).
        codebook_dim: lookup dimension (None: ``dim``, or 8 for the factorized lookup).
        lookup: ``"euclidean"`` (EMA) or ``"factorized"`` (l2-normalised cosine, gradient).
        decay: EMA decay of euclidean codebooks.
        commitment_weight, codebook_weight: loss weights in the ``penalty``.
        kmeans_init, dead_code: collapse countermeasures.
        dropout: quantizer dropout probability per item (training).
        min_q: fewest codebooks kept under dropout (None: 1, or ``n_semantic`` for split).
        project: force input/output projections in ``rvq`` even when ``input_dim == dim``.
    """

    kind: Literal["vq", "rvq", "split"] = "rvq"
    input_dim: int = 512
    dim: int = 256
    n_q: int = 8
    codebook_size: int = 2048
    n_semantic: int = 0
    codebook_dim: Optional[int] = None
    lookup: Literal["euclidean", "factorized"] = "euclidean"
    decay: float = 0.99
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    kmeans_init: KMeansInit = field(default_factory=KMeansInit)
    dead_code: DeadCodePolicy = field(default_factory=DeadCodePolicy)
    dropout: float = 0.0
    min_q: Optional[int] = None
    project: bool = False

    def __post_init__(self):
        if self.kind not in ("vq", "rvq", "split"):
            raise ValueError(f"QuantizerConfig.kind must be 'vq', 'rvq' or 'split', got {self.kind!r}")
        if self.kind == "split" and self.n_semantic < 1:
            raise ValueError("QuantizerConfig(kind='split') needs n_semantic >= 1")

    @classmethod
    def mimi(cls, n_q: int = 32, **overrides) -> "QuantizerConfig":
        """Mimi's quantizer: split RVQ 512 -> 256, 2048 codes, 1 semantic codebook, EMA codebooks."""
        base = dict(kind="split", input_dim=512, dim=256, n_q=n_q, codebook_size=2048, n_semantic=1)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (policies as nested dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizerConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"QuantizerConfig: unknown keys {unknown}; valid keys: {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("kmeans_init"), dict):
            data["kmeans_init"] = KMeansInit(**data["kmeans_init"])
        if isinstance(data.get("dead_code"), dict):
            data["dead_code"] = DeadCodePolicy(**data["dead_code"])
        return cls(**data)


def build_quantizer(cfg: QuantizerConfig) -> Quantizer:
    """The quantizer module ``cfg`` describes (all share ``forward``/``encode``/``decode``)."""
    layer = dict(
        codebook_dim=cfg.codebook_dim, lookup=cfg.lookup, decay=cfg.decay,
        commitment_weight=cfg.commitment_weight, codebook_weight=cfg.codebook_weight,
        kmeans_init=cfg.kmeans_init, dead_code=cfg.dead_code,
    )
    if cfg.kind == "vq":
        return VectorQuantizer(cfg.input_dim, cfg.codebook_size, **layer)
    if cfg.kind == "rvq":
        return ResidualVQ(
            cfg.input_dim, cfg.dim, cfg.n_q, cfg.codebook_size, dropout=cfg.dropout,
            min_q=1 if cfg.min_q is None else cfg.min_q, n_semantic=cfg.n_semantic, project=cfg.project, **layer,
        )
    return SplitResidualVQ(
        cfg.input_dim, cfg.dim, cfg.n_q, cfg.n_semantic, cfg.codebook_size, dropout=cfg.dropout, min_q=cfg.min_q, **layer
    )
