"""Codec training: config, data, losses, discriminators, checkpoints, the trainer, DDP.

    from speechtok.codec.train import CodecTrainer, load_train_config
    trainer = CodecTrainer(load_train_config("codec/train/configs/tiny.json"), "runs/tiny")
    trainer.fit()
    trainer.export("models/my-codec")    # a speechtok.load-able directory
"""
from __future__ import annotations

_LAZY = {
    "TrainConfig": "config:TrainConfig",
    "DataConfig": "config:DataConfig",
    "LossConfig": "config:LossConfig",
    "DiscriminatorConfig": "config:DiscriminatorConfig",
    "OptimConfig": "config:OptimConfig",
    "DistillConfig": "config:DistillConfig",
    "TeacherConfig": "config:TeacherConfig",
    "TrainConfigError": "config:TrainConfigError",
    "load_train_config": "config:load_train_config",
    "CodecTrainer": "trainer:CodecTrainer",
    "StepResult": "trainer:StepResult",
    "train_codec": "trainer:train_codec",
    "GeneratorStep": "generator:GeneratorStep",
    "build_generator": "generator:build_generator",
    "list_utterances": "data:list_utterances",
    "Batch": "data:Batch",
    "save_checkpoint": "checkpoint:save_checkpoint",
    "load_checkpoint": "checkpoint:load_checkpoint",
}

__all__ = list(_LAZY)

from speechtok._lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
