"""`CodecTrainer`: GAN codec training with semantic distillation, exact resume, AMP, compile and DDP.

One step (DAC's order):

1. ``out = generator(audio)``: reconstruction ``out.x`` ``[B, C, S]``, quantizer ``penalty``,
   ``metrics`` and the semantic latent ``out.semantic`` ``[B, D, T]``.
2. Discriminator update on real vs. detached fake (LSGAN or hinge), after ``adv_start_step``.
3. Generator update on ``mel * w + stft * w + adv * w + feature matching * w + penalty * w
   + distill * w``; feature matching uses the real activations of step 2 (detached).

Everything a step depends on is restored on resume: weights, optimizer moments, GradScaler, RNG
states and the data position (crops are a pure function of seed and position, see
`speechtok.codec.train.data`), so a resumed run continues with the very same losses.

Python use::

    from speechtok.codec.train import CodecTrainer, load_train_config
    CodecTrainer(load_train_config("cfg.json"), "runs/x").fit()
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..distill import DistillHead, align_features, distill_loss
from . import ddp
from .checkpoint import TrainingState, find_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import CropDataset, fixed_batch, list_utterances, make_loader
from .discriminators import build_discriminators
from .generator import GeneratorStep, build_generator
from .logger import RunLogger
from .losses import (MultiScaleMelLoss, MultiScaleSTFTLoss, discriminator_loss, feature_matching_loss,
                     generator_adversarial_loss)


@dataclass(frozen=True)
class StepResult:
    """Losses (floats) of one optimizer step; ``losses["total"]`` is the generator objective."""

    step: int
    losses: dict[str, float]


def _rate(model, cfg, name: str):
    for src in (model, getattr(model, "config", None), getattr(model, "cfg", None), cfg):
        v = getattr(src, name, None) if src is not None else None
        if v is not None:
            return v
    raise AttributeError(f"the generator does not tell its {name} (set model.{name} or model.config.{name})")


class CodecTrainer:
    """Trains a codec from a `TrainConfig` into ``run_dir`` (resumes from its latest checkpoint).

    Args:
        cfg: the training config.
        run_dir: checkpoints, ``metrics.jsonl``, ``tensorboard/``, ``config.json``.
        model: a generator to train instead of building ``cfg.model`` (must return an object with
            ``x``, ``penalty``, ``metrics`` and, for distillation, ``semantic``).
        teacher: a teacher instead of building ``cfg.distill.teacher``.
        resume: continue from the latest checkpoint in ``run_dir`` if there is one.
        readonly: write nothing into ``run_dir`` (for exporting or evaluating a checkpoint).
    """

    def __init__(self, cfg: TrainConfig, run_dir, *, model: Optional[torch.nn.Module] = None,
                 teacher: Any = None, resume: bool = True, ctx: Optional[ddp.DistContext] = None,
                 readonly: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ctx = ctx or ddp.init_distributed(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        dev = self.ctx.device
        codec_cfg = None
        if model is None:
            qopts = dict(cfg.quantizer_options)
            if cfg.quantizer_dropout:
                qopts["dropout"] = cfg.quantizer_dropout
            model, codec_cfg = build_generator(cfg.model, qopts)
        self.codec_config = codec_cfg
        self.sample_rate = int(_rate(model, codec_cfg, "sample_rate"))
        self.frame_rate = float(_rate(model, codec_cfg, "frame_rate"))
        self.hop = int(round(self.sample_rate / self.frame_rate))
        self.generator = model.to(dev).train()
        lc = cfg.loss
        self.mel_loss = MultiScaleMelLoss(sample_rate=self.sample_rate, windows=lc.mel_windows,
                                          bins=lc.mel_bins).to(dev)
        self.stft_loss = MultiScaleSTFTLoss(windows=lc.stft_windows).to(dev) if lc.stft_weight > 0 else None
        self.use_gan = lc.adv_weight > 0 or lc.feature_weight > 0
        self.disc = build_discriminators(cfg.disc).to(dev).train() if self.use_gan else None
        self.teacher = teacher
        if self.teacher is None and cfg.distill.teacher is not None:
            from ..teachers import build_teacher

            self.teacher = build_teacher(cfg.distill.teacher)
        if self.teacher is not None and hasattr(self.teacher, "to"):
            self.teacher.to(dev)
        self.head = None
        if self.teacher is not None:
            self.head = DistillHead(in_dim=self._semantic_dim(), teacher_dim=int(self.teacher.dim)).to(dev)
        self.step_module = GeneratorStep(self.generator, self.head,
                                         0.0 if cfg.quantize_start_step else cfg.quantize_prob).train()
        oc = cfg.optim
        self.opt_g = torch.optim.AdamW(self.step_module.parameters(), lr=oc.lr, betas=oc.betas,
                                       weight_decay=oc.weight_decay)
        self.opt_d = (torch.optim.AdamW(self.disc.parameters(), lr=oc.disc_lr, betas=oc.betas,
                                        weight_decay=oc.weight_decay) if self.disc is not None else None)
        self.amp_dtype = self._amp_dtype(cfg.amp, dev)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        # data
        self.items = list_utterances(cfg.data.train, cfg.data.min_seconds, cfg.data.exclude_speakers,
                                     cfg.data.exclude_sources)
        self.dataset = CropDataset(self.items, self.sample_rate, cfg.data.crop_seconds, cfg.seed)
        self.valid = None
        if cfg.data.valid and (cfg.sample_every or cfg.valid_every):
            vitems = list_utterances(cfg.data.valid, cfg.data.min_seconds)
            self.valid = fixed_batch(vitems, self.sample_rate, max(cfg.data.crop_seconds, 2.0), cfg.data.valid_items)
        self.state = TrainingState()
        if resume and find_checkpoint(self.run_dir) is not None:
            self.state = load_checkpoint(self.run_dir, modules=self._modules(), optimizers=self._optimizers(),
                                         scaler=self.scaler)
        # wrappers come after loading (checkpoints hold the plain modules)
        self._gen: torch.nn.Module = self.step_module
        self._disc = self.disc
        if cfg.compile and dev.type == "cuda":
            self._gen = torch.compile(self._gen)
            self._disc = torch.compile(self._disc) if self._disc is not None else None
        self._gen = ddp.wrap(self._gen, self.ctx)
        self._disc = ddp.wrap(self._disc, self.ctx) if self._disc is not None else None
        self.logger = RunLogger(self.run_dir, tensorboard=cfg.tensorboard, enabled=self.ctx.is_main and not readonly)
        if self.ctx.is_main and not readonly:
            from speechtok.atomic import atomic_write_text

            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=1))

    # ------------------------------------------------------------------ setup helpers
    @staticmethod
    def _amp_dtype(amp: str, dev: torch.device) -> Optional[torch.dtype]:
        if amp == "off" or (amp == "auto" and dev.type != "cuda"):
            return None
        if amp in ("auto", "bf16"):
            return torch.bfloat16
        if amp == "fp16":
            return torch.float16
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")

    def _semantic_dim(self) -> int:
        x = torch.zeros(1, 1, self.hop * 4, device=self.ctx.device)
        self.generator.eval()  # no EMA/k-means/dead-code side effects from the probe
        try:
            with torch.no_grad():
                out = self.generator(x)
        finally:
            self.generator.train()
        sem = getattr(out, "semantic", None)
        if sem is None:
            raise ValueError("distillation needs a generator whose training output has a `semantic` latent "
                             "[B, D, T] (a split RVQ with a semantic codebook, or RVQ level 1)")
        return int(sem.shape[1])

    def _modules(self) -> dict[str, torch.nn.Module]:
        mods = {"generator": self.generator}
        if self.disc is not None:
            mods["discriminator"] = self.disc
        if self.head is not None:
            mods["distill_head"] = self.head
        return mods

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"generator": self.opt_g}
        if self.opt_d is not None:
            opts["discriminator"] = self.opt_d
        return opts

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def lr_at(self, step: int, base: float) -> float:
        oc = self.cfg.optim
        if oc.warmup_steps and step < oc.warmup_steps:
            return base * (step + 1) / oc.warmup_steps
        return base * oc.lr_gamma ** max(0, step - oc.warmup_steps)

    # ------------------------------------------------------------------ training
    def _backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params, clip: float) -> float:
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()
        return norm

    def train_step(self, batch) -> StepResult:
        """One discriminator + generator update on a `Batch`; returns the losses."""
        cfg, lc = self.cfg, self.cfg.loss
        step = self.state.step
        for g in self.opt_g.param_groups:
            g["lr"] = self.lr_at(step, cfg.optim.lr)
        if self.opt_d is not None:
            for g in self.opt_d.param_groups:
                g["lr"] = self.lr_at(step, cfg.optim.disc_lr)
        batch = batch.to(self.ctx.device)
        self._quantize_schedule(step)
        y, lengths = batch.audio, batch.lengths
        pad = (-y.shape[-1]) % self.hop  # the codec takes whole frames
        if pad:
            y = torch.nn.functional.pad(y, (0, pad))
        S = y.shape[-1]
        smask = (torch.arange(S, device=y.device)[None, :] < lengths[:, None])[:, None, :]
        with self._autocast():
            out = self._gen(y, lengths)
        if out.x.shape[-1] < S or out.x.shape[:2] != y.shape[:2]:
            raise ValueError(f"generator returned audio {tuple(out.x.shape)} for input {tuple(y.shape)}")
        x = out.x[..., :S].float() * smask
        losses: dict[str, torch.Tensor] = {"mel": self.mel_loss(x, y)}
        total = lc.mel_weight * losses["mel"]
        if self.stft_loss is not None:
            losses["stft"] = self.stft_loss(x, y)
            total = total + lc.stft_weight * losses["stft"]
        if out.penalty is not None:
            losses["penalty"] = out.penalty.float()
            total = total + lc.penalty_weight * losses["penalty"]
        gan_on = self._disc is not None and step >= lc.adv_start_step
        norms = {}
        if gan_on:
            with self._autocast():
                d_real = self._disc(y)
                d_fake = self._disc(x.detach())
            losses["disc"] = discriminator_loss(d_real.logits, d_fake.logits, lc.adversarial)
            norms["grad_norm_d"] = self._backward_step(losses["disc"], self.opt_d, self.disc.parameters(),
                                                       cfg.optim.disc_grad_clip)
            with self._autocast():
                d_fake = self._disc(x)
            losses["adv"] = generator_adversarial_loss(d_fake.logits, lc.adversarial)
            losses["feature"] = feature_matching_loss(d_real.features, d_fake.features)
            total = total + lc.adv_weight * losses["adv"] + lc.feature_weight * losses["feature"]
        if self.teacher is not None:
            tf = self.teacher(batch.audio, batch.lengths, batch.sample_rate, ids=batch.ids, offsets=batch.offsets)
            pred = out.semantic_pred.float()
            target, valid = align_features(_to(tf, y.device), pred.shape[1], self.frame_rate)
            fmask = torch.arange(pred.shape[1], device=y.device)[None, :] < \
                ((lengths + self.hop - 1) // self.hop)[:, None]
            losses["distill"] = distill_loss(pred, target, valid & fmask, cfg.distill.loss, cfg.distill.target_norm)
            total = total + cfg.distill.weight * losses["distill"]
        losses["total"] = total
        norms["grad_norm_g"] = self._backward_step(total, self.opt_g, self.step_module.parameters(),
                                                   cfg.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.update()
        self.state.step += 1
        self.state.data_position += 1
        values = {k: float(v.detach()) for k, v in losses.items()}
        if self.state.step % max(1, cfg.log_every) == 0 or self.state.step == 1:
            values.update({k: float(v) for k, v in norms.items()})
            values.update({k: float(v) for k, v in (getattr(out, "metrics", None) or {}).items()
                           if torch.is_tensor(v) and v.numel() == 1})
            values["lr"] = self.opt_g.param_groups[0]["lr"]
        return StepResult(self.state.step, values)

    def _quantize_schedule(self, step: int) -> None:
        """Autoencoder warm-up: no quantization before ``quantize_start_step``; at that step the
        codebooks are initialised again from the current latents."""
        start = self.cfg.quantize_start_step
        self.step_module.quantize_prob = 0.0 if step < start else float(self.cfg.quantize_prob)
        if start and step == start:
            from ..quantization import restart_initialization

            restart_initialization(self.generator)

    def fit(self, steps: Optional[int] = None) -> list[StepResult]:
        """Train until ``steps`` (default ``cfg.steps``) total steps; returns this call's results."""
        cfg = self.cfg
        until = cfg.steps if steps is None else steps
        loader = make_loader(self.dataset, cfg.data.batch_size, cfg.seed, start=self.state.data_position,
                             num_workers=cfg.data.num_workers, rank=self.ctx.rank, world_size=self.ctx.world_size)
        results = []
        it = iter(loader)
        try:
            while self.state.step < until:
                res = self.train_step(next(it))
                results.append(res)
                s = res.step
                if not all(math.isfinite(v) for v in res.losses.values()):
                    raise FloatingPointError(f"step {s}: non-finite loss {res.losses}")
                if s % max(1, cfg.log_every) == 0 or s == 1:
                    self.logger.scalars(s, ddp.mean_across(res.losses, self.ctx))
                if self.valid is not None and cfg.valid_every and s % cfg.valid_every == 0:
                    self.validate()
                if self.valid is not None and cfg.sample_every and s % cfg.sample_every == 0:
                    self.log_samples()
                if cfg.checkpoint_every and s % cfg.checkpoint_every == 0:
                    self.save()
            if not cfg.checkpoint_every or self.state.step % cfg.checkpoint_every:
                self.save()
        finally:
            self.logger.close()
        return results

    # ------------------------------------------------------------------ eval / io
    @torch.no_grad()
    def reconstruct(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Eval-mode reconstruction ``[B, C, S]`` of ``audio`` ``[B, C, S]``."""
        self.step_module.eval()
        try:
            S = audio.shape[-1]
            x = torch.nn.functional.pad(audio.to(self.ctx.device), (0, (-S) % self.hop))
            out = self.step_module(x, lengths.to(self.ctx.device))
        finally:
            self.step_module.train()
        return out.x[..., :S].float()

    def validate(self) -> dict[str, float]:
        v = self.valid
        x = self.reconstruct(v.audio, v.lengths)
        mask = (torch.arange(x.shape[-1], device=x.device)[None] < v.lengths.to(x.device)[:, None])[:, None]
        vals = {"mel": float(self.mel_loss(x * mask, v.audio.to(x.device)))}
        self.logger.scalars(self.state.step, vals, prefix="valid")
        return vals

    def log_samples(self, count: int = 2) -> None:
        v = self.valid
        x = self.reconstruct(v.audio, v.lengths)
        for i in range(min(count, x.shape[0])):
            n = int(v.lengths[i])
            self.logger.audio(self.state.step, f"sample{i}/reconstruction", x[i, 0, :n], self.sample_rate)
            if self.state.step == self.cfg.sample_every:
                self.logger.audio(0, f"sample{i}/original", v.audio[i, 0, :n], self.sample_rate)

    def save(self) -> Optional[Path]:
        """Write a checkpoint (main process only)."""
        path = None
        if self.ctx.is_main:
            extra = {"teacher": self.teacher.describe() if self.teacher is not None else None,
                     "codec_config": self.codec_config.to_dict() if self.codec_config is not None else None}
            self.state.extra = extra
            path = save_checkpoint(self.run_dir, modules=self._modules(), optimizers=self._optimizers(),
                                   state=self.state, config=self.cfg.to_dict(), scaler=self.scaler,
                                   keep=self.cfg.keep_checkpoints)
        ddp.barrier(self.ctx)
        return path

    def export(self, directory, name: Optional[str] = None) -> Path:
        """Save the generator as a speechtok model directory (``speechtok.load``-able)."""
        from ..build import build_codec
        from ..tokenizer import CodecTokenizer

        if self.codec_config is None:
            raise ValueError("export needs a generator built from cfg.model (a codec config)")
        model = build_codec(self.codec_config)  # inference quantizer settings (no dropout)
        model.load_state_dict({k: v.detach().cpu() for k, v in self.generator.state_dict().items()})
        return Path(CodecTokenizer(model, name=name).save(directory))


def _to(tf, device):
    from ..distill import TeacherFeatures

    return TeacherFeatures(tf.features.to(device), tf.frame_rate, tf.start, tf.lengths.to(device))


def train_codec(cfg: TrainConfig, run_dir, *, steps: Optional[int] = None, export: Optional[str] = None,
                resume: bool = True) -> list[StepResult]:
    """Train (or resume) a codec run; optionally export the model directory at the end (main process)."""
    trainer = CodecTrainer(cfg, run_dir, resume=resume)
    try:
        results = trainer.fit(steps)
        if export and trainer.ctx.is_main:
            trainer.export(export)
    finally:
        ddp.shutdown(trainer.ctx)
    return results
