"""Codebook-collapse countermeasures as small frozen policy objects.

Each countermeasure is switchable on its own (``enabled``) so its effect can be measured alone
(see ``speechtok.benchmarks.quantizer_collapse``). A disabled :class:`DeadCodePolicy` still
provides the threshold used to *count* dead codes in the metrics.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KMeansInit:
    """Initialise a codebook by k-means on the first training batches.

    Attributes:
        enabled: run k-means; when False the codebook starts from random vectors.
        iters: Lloyd iterations (a few are enough: the codebook keeps training afterwards).
        batches: training batches whose (valid) frames are pooled before k-means runs; use
            more than one when a batch holds fewer frames than the codebook has codes.
        max_samples: at most this many pooled vectors go into k-means (random subset).

    In distributed training k-means runs once, on rank 0, and the result is broadcast.
    """

    enabled: bool = True
    iters: int = 10
    batches: int = 1
    max_samples: int = 65536

    def __post_init__(self):
        if self.iters < 1 or self.batches < 1 or self.max_samples < 1:
            raise ValueError(f"KMeansInit needs iters, batches, max_samples >= 1, got {self}")


@dataclass(frozen=True)
class DeadCodePolicy:
    """Replace rarely used codes by random recent input vectors.

    A code is *dead* when its usage (an EMA of per-step counts) falls below
    ``threshold * total_usage / codebook_size``: a fraction of the uniform share. Being relative,
    the rule means the same with 4096 codes and small batches as with 64 codes and large ones
    (a fixed count such as 2 marks almost every code dead in the former case).

    Attributes:
        enabled: replace dead codes (when False they are only counted in the metrics).
        threshold: fraction of the uniform share below which a code is dead (Mimi: 0.1).
        check_every: training steps between checks; the check is sync-free, but replacement
            needs usage statistics of several steps to be meaningful.
        decay: decay of the usage EMA the rule reads (per-step counts, in frames). A code
            that stops being used falls under the threshold after about
            ``log(threshold) / log(decay)`` steps (45 with the defaults; 230 with Mimi's 0.99,
            which ties this EMA to the codebook's). The usage EMA restarts at the uniform share
            in a new process (it is not part of the state dict).
    """

    enabled: bool = True
    threshold: float = 0.1
    check_every: int = 10
    decay: float = 0.95

    def __post_init__(self):
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"DeadCodePolicy.threshold must be in [0, 1), got {self.threshold}")
        if self.check_every < 1:
            raise ValueError(f"DeadCodePolicy.check_every must be >= 1, got {self.check_every}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"DeadCodePolicy.decay must be in (0, 1), got {self.decay}")
