"""Train a unit vocoder with the codec training stack (`speechtok.codec.train.CodecTrainer`).

The generator is `VocoderGenerator`: audio ``[B, 1, S]`` -> frame units from the *frozen* unit
tokenizer (no grad; deduped/syllable units expanded back to frames) -> `UnitVocoder` -> audio.
`CodecTrainer` supplies the rest: multi-scale mel (+ optional STFT, GAN and feature-matching)
losses, AdamW with warmup, checkpoints with exact resume, ``metrics.jsonl``/TensorBoard logs.

Training config: the codec `TrainConfig` JSON schema (``data``, ``loss``, ``disc``, ``optim``,
``steps``, ...). Its ``model`` section holds the `UnitVocoderConfig` sizes (``embed_dim``,
``context_layers``, ``context_kernel``, ``n_filters``, ``ratios``, ``n_residual_layers``); K, the
rates and the units id come from the tokenizer (given there, they must agree), and ``ratios``
default to a factorization of the tokenizer's hop (160 -> 8*5*4, 320 -> 8*8*5). ``distill`` must
stay empty (no teacher). See ``units/configs/vocoder-mfcc-16k-cpu.json``.

Python::

    from speechtok.units.vocoder_train import train_vocoder
    train_vocoder("units-mfcc-500", "vocoder.json", "runs/voc", data=["train.jsonl"],
                  export_to="units-mfcc-500-voc")
    speechtok.load("units-mfcc-500-voc").decode(codes)

Only the vocoder is checkpointed and optimized; the tokenizer is not a submodule of the generator.
``run_dir/vocoder_config.json`` pins the run to one vocoder (units id, K, sizes): resuming it with
another tokenizer or other sizes is refused. ``steps=0`` on an existing run exports its latest
checkpoint without training.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .vocoder import (UnitVocoder, UnitVocoderConfig, VocoderError, build_vocoder, check_vocoder_matches,
                      vocoder_config_for)

_FROM_TOKENIZER = ("n_units", "sample_rate", "frame_rate", "units_model_id")


@dataclass(frozen=True, eq=False)
class VocoderOutput:
    """What `CodecTrainer` reads from a generator: ``x [B, 1, S]``, no quantizer penalty, metrics."""

    x: torch.Tensor
    penalty: Optional[torch.Tensor] = None
    metrics: dict = field(default_factory=dict)


class VocoderGenerator(nn.Module):
    """Audio -> (frozen tokenizer) frame units -> trainable `UnitVocoder` -> audio ``[B, 1, S]``."""

    def __init__(self, tokenizer, vocoder: UnitVocoder):
        super().__init__()
        check_vocoder_matches(vocoder.config, tokenizer)
        self.vocoder = vocoder
        object.__setattr__(self, "_tokenizer", tokenizer.eval())  # frozen: not a submodule, never checkpointed
        self.sample_rate = int(tokenizer.sample_rate)
        self.frame_rate = float(tokenizer.frame_rate)

    @torch.no_grad()
    def units(self, audio: torch.Tensor, lengths: torch.Tensor):
        """Frame units `Codes` ``[B, 1, T]`` of ``audio [B, 1, S]`` (lengths in samples)."""
        tok = self._tokenizer
        if tok.centroids.device != audio.device:
            tok.to(audio.device)
        return tok._units(audio, lengths).expand()

    def forward(self, audio: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> VocoderOutput:
        """``audio [B, 1, S]``, ``lengths [B]`` samples -> `VocoderOutput` with ``x [B, 1, S]``."""
        B, _, S = audio.shape
        if lengths is None:
            lengths = torch.full((B,), S, dtype=torch.long, device=audio.device)
        u = self.units(audio, lengths)
        y = self.vocoder(u.codes[:, 0].clone(), u.lengths.clone())
        y = y[..., :S] if y.shape[-1] >= S else nn.functional.pad(y, (0, S - y.shape[-1]))
        return VocoderOutput(y)


@dataclass(frozen=True)
class VocoderRun:
    """Result of `train_vocoder`: the step results of this call and the exported directory (if any)."""

    results: list
    export_dir: Optional[Path]
    trainer: object = None


def _as_tokenizer(tok):
    if isinstance(tok, (str, Path)):
        import speechtok

        tok = speechtok.load(str(tok))
    if not hasattr(tok, "units_id"):
        raise VocoderError(f"train_vocoder needs a unit tokenizer, got {type(tok).__name__}")
    return tok


def vocoder_config_from_train(model_section: dict, tokenizer) -> UnitVocoderConfig:
    """The `UnitVocoderConfig` of a training config's ``model`` section, completed from the tokenizer."""
    sec = {k: v for k, v in (model_section or {}).items() if not k.startswith("_")}
    want = {"n_units": int(tokenizer.units_codebook_sizes[0]), "sample_rate": int(tokenizer.sample_rate),
            "frame_rate": float(tokenizer.frame_rate), "units_model_id": tokenizer.units_id}
    for k in _FROM_TOKENIZER:
        if k in sec and sec[k] != want[k]:
            raise VocoderError(f"training config model.{k} = {sec[k]!r} but the tokenizer has {want[k]!r}")
    if "ratios" not in sec:  # a factorization of the tokenizer's hop
        sec["ratios"] = list(vocoder_config_for(tokenizer).ratios)
    # unknown keys and sizes are checked by from_dict; K, rates and units id are the tokenizer's by construction
    return UnitVocoderConfig.from_dict({**sec, **want}, "training config 'model' section")


def train_vocoder(tokenizer: Union[str, Path, object], config, run_dir, steps: Optional[int] = None,
                  export_to: Optional[Union[str, Path]] = None, resume: bool = True,
                  data: Sequence[str] = ()) -> VocoderRun:
    """Train (or resume) a unit vocoder for ``tokenizer`` (a unit tokenizer directory or object).

    Args:
        config: a `TrainConfig` or a path to its JSON/YAML file (see module doc).
        run_dir: checkpoints and logs; an existing run resumes exactly.
        steps: train until this total step count (default: ``config.steps``).
        export_to: write the tokenizer directory with the trained vocoder attached (atomic).
        data: training manifests/audio folders; replace the config's ``data.train`` (the shipped
            configs name none). Neither given: `TrainConfigError`.
    """
    from speechtok.codec.train import CodecTrainer, load_train_config
    from speechtok.codec.train import ddp
    from speechtok.codec.train.config import with_train_data

    cfg = config if not isinstance(config, (str, Path)) else load_train_config(config)
    cfg = with_train_data(cfg, data, str(config) if isinstance(config, (str, Path)) else "training config")
    if cfg.distill.teacher is not None:
        raise VocoderError("a vocoder training config takes no distillation teacher (distill.teacher must be null)")
    tok = _as_tokenizer(tokenizer)
    vcfg = vocoder_config_from_train(cfg.model, tok)
    _check_run_dir(Path(run_dir), vcfg, resume)
    torch.manual_seed(cfg.seed)
    gen = VocoderGenerator(tok, build_vocoder(vcfg))
    trainer = CodecTrainer(cfg, run_dir, model=gen, resume=resume)
    try:
        results = trainer.fit(steps)
        out = None
        if export_to is not None and trainer.ctx.is_main:
            out = export_vocoder(tok, gen.vocoder, export_to)
    finally:
        ddp.shutdown(trainer.ctx)
    return VocoderRun(results, out, trainer)


RUN_FILE = "vocoder_config.json"


def _check_run_dir(run_dir: Path, vcfg: UnitVocoderConfig, resume: bool) -> None:
    """A run directory trains one vocoder: resuming it for other units or sizes is refused."""
    import json

    from speechtok.atomic import atomic_write_text

    path, new = run_dir / RUN_FILE, vcfg.to_dict()
    if resume and path.is_file():
        from speechtok.formats import read_json

        old = read_json(path, VocoderError, "vocoder run file")
        if not isinstance(old, dict):
            raise VocoderError(f"{path}: vocoder run file must be a JSON object")
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise VocoderError(f"{path}: this run trains another vocoder (differs in {diff}); "
                               "use a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(new, indent=1) + "\n")


def export_vocoder(tokenizer, vocoder: UnitVocoder, directory) -> Path:
    """Save ``tokenizer`` with a copy of ``vocoder`` attached as one model directory (atomic)."""
    tok = copy.deepcopy(tokenizer).cpu()
    voc = build_vocoder(vocoder.config)
    voc.load_state_dict({k: v.detach().cpu() for k, v in vocoder.state_dict().items()})
    tok.set_vocoder(voc)
    return Path(tok.save(directory))


__all__ = ["VocoderGenerator", "VocoderOutput", "VocoderRun", "train_vocoder", "export_vocoder",
           "vocoder_config_from_train", "UnitVocoderConfig"]
