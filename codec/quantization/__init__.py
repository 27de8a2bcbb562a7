"""Vector quantizers with codebook-collapse countermeasures.

Latents are channels-first ``[B, D, T]``, masks bool ``[B, T]`` (True = valid), codes int64
``[B, K, T]``. Every quantizer's ``forward(x, mask=None, n_q=None)`` returns a
:class:`QuantizerOutput`; ``encode``/``decode`` work with the first ``k`` codebooks.

    >>> from speechtok.codec.quantization import QuantizerConfig, build_quantizer
    >>> rvq = build_quantizer(QuantizerConfig(kind="rvq", input_dim=64, dim=32, n_q=4, codebook_size=256))
    >>> out = rvq(x, mask)            # out.x [B, 64, T], out.codes [B, 4, T], out.penalty, out.metrics
"""
from .codebook import EuclideanCodebook, FactorizedCodebook
from .config import QuantizerConfig, build_quantizer
from .kmeans import KMeansResult, kmeans, nearest
from .metrics import codebook_metrics, usage_entropy_bits
from .policy import DeadCodePolicy, KMeansInit
from .residual import ResidualVQ, SplitResidualVQ
from .vq import QuantizerOutput, VectorQuantizer


def restart_initialization(module) -> int:
    """Re-arm the initialisation (k-means) of every codebook inside ``module``; returns how many."""
    from .codebook import _Codebook

    books = [m for m in module.modules() if isinstance(m, _Codebook)]
    for b in books:
        b.restart_initialization()
    return len(books)

__all__ = [
    "restart_initialization",
    "DeadCodePolicy",
    "EuclideanCodebook",
    "FactorizedCodebook",
    "KMeansInit",
    "KMeansResult",
    "QuantizerConfig",
    "QuantizerOutput",
    "ResidualVQ",
    "SplitResidualVQ",
    "VectorQuantizer",
    "build_quantizer",
    "codebook_metrics",
    "kmeans",
    "nearest",
    "usage_entropy_bits",
]
