"""The runner's side of the quality metrics of `speechtok.benchmarks.quality`.

That module's contract: ``QUALITY_METRICS: dict[str, MetricSpec]`` with ``MetricSpec(name, fn,
keys, higher_is_better, unit, needs_reference, requires)``, optionally ``metric_spec(name) ->
MetricSpec | None`` for parametrised names (``speaker_similarity:wavlm-sv:DIR``), where ``fn(reference [S] float32,
estimate [S], sample_rate) -> float | dict[str, float]`` (the original and the resynthesis, both
at ``sample_rate`` Hz, as 1-D float32 torch tensors), ``available(name) -> bool`` and
``dnsmos(audio [S], sample_rate) -> dict[str, float]`` for the original audio. A metric that is
unknown or not available (its ``requires`` not installed) is skipped with a note in the report.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch


@dataclass
class QualityPlan:
    """The metric specs a run computes, the notes about the ones it skips, and the module."""

    specs: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    module: Any = None

    @property
    def keys(self) -> list[str]:
        return [k for s in self.specs for k in spec_keys(s)]


def spec_keys(spec: Any) -> tuple[str, ...]:
    """The result keys of ``spec`` (its ``keys``, else its name)."""
    return tuple(getattr(spec, "keys", None) or (spec.name,))


def plan_quality(names: Sequence[str], module: Any = None) -> QualityPlan:
    """Which of ``names`` can run: ``module`` (default: `speechtok.benchmarks.quality`) provides them."""
    plan = QualityPlan()
    if not names:
        return plan
    if module is None:
        try:
            module = importlib.import_module("speechtok.benchmarks.quality")
        except ImportError as e:
            plan.notes.append(f"quality metrics {', '.join(names)} skipped: speechtok.benchmarks.quality "
                              f"cannot be imported ({e})")
            return plan
    plan.module = module
    table = getattr(module, "QUALITY_METRICS", {})
    lookup = getattr(module, "metric_spec", table.get)  # metric_spec also parses speaker_similarity:MODEL
    for name in names:
        spec = lookup(name)
        if spec is None:
            plan.notes.append(f"{name} skipped: unknown quality metric (known: {', '.join(sorted(table)) or 'none'})")
        elif not _available(module, name):
            req = getattr(spec, "requires", None) or ()
            need = req if isinstance(req, str) else ", ".join(map(str, req))
            plan.notes.append(f"{name} skipped: not available here" + (f" (needs {need})" if need else ""))
        else:
            plan.specs.append(spec)
    return plan


def _available(module: Any, name: str) -> bool:
    fn = getattr(module, "available", None)
    try:
        return bool(fn(name)) if fn is not None else True
    except Exception:  # a broken optional dependency reads as unavailable
        return False


def score(spec: Any, reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """``spec`` on one pair (``[S]`` float32 each); NaN for every key where it fails or is not finite."""
    keys = spec_keys(spec)
    try:
        out = spec.fn(reference, estimate, sample_rate)
    except Exception:  # e.g. no voiced frames for F0, too short for ViSQOL
        return {k: float("nan") for k in keys}
    if not isinstance(out, dict):
        out = {keys[0]: out}
    return {k: _finite(out.get(k)) for k in keys}


def score_original(plan: QualityPlan, audio: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """The reference-free metrics on the original audio (DNSMOS through ``module.dnsmos``)."""
    out: dict[str, float] = {}
    for spec in plan.specs:
        if getattr(spec, "needs_reference", True):
            continue
        if spec.name == "dnsmos" and hasattr(plan.module, "dnsmos"):
            try:
                d = plan.module.dnsmos(audio, sample_rate)
                out.update({k: _finite(v) for k, v in dict(d).items()})
            except Exception:
                out.update({k: float("nan") for k in spec_keys(spec)})
        else:
            out.update(score(spec, audio, audio, sample_rate))
    return out


def _finite(v: Optional[float]) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")


def higher_is_better(plan: QualityPlan) -> dict[str, bool]:
    """Result key -> whether higher is better (for reports)."""
    out = {}
    for s in plan.specs:
        h = getattr(s, "higher_is_better", True)
        out.update({k: bool(h.get(k, True)) if isinstance(h, dict) else bool(h) for k in spec_keys(s)})
    return out
