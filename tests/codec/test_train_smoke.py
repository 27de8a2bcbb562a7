"""End-to-end codec training on a tiny config: finite falling losses, exact resume, CLI."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")

from speechtok.codec.train.config import (DataConfig, DiscriminatorConfig, DistillConfig, LossConfig,  # noqa: E402
                                          OptimConfig, TeacherConfig, TrainConfig)
from speechtok.codec.train.trainer import CodecTrainer  # noqa: E402


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_corpus(root: Path, n: int = 6) -> Path:
    """Harmonic tones with noise at 8 and 16 kHz (the tiny codec runs at 8 kHz: resampling is used)."""
    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sr = 16000 if i % 2 else 8000
        k = int(sr * rng.uniform(0.3, 0.6))
        t = np.arange(k) / sr
        f0 = rng.uniform(100, 300)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 2.5 * f0 * t) + 0.02 * rng.standard_normal(k)
        soundfile.write(root / f"wav/u{i}.wav", x.astype(np.float32), sr)
        rows.append({"id": f"u{i}", "audio": f"wav/u{i}.wav", "text": None, "speaker": f"s{i % 2}",
                     "source": "synth", "sample_rate": sr, "duration": k / sr})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def tiny_config(manifest: Path, **changes) -> TrainConfig:
    cfg = TrainConfig(
        model={"preset": "tiny"},
        data=DataConfig(train=(str(manifest),), crop_seconds=0.2, batch_size=2),
        loss=LossConfig(mel_windows=(32, 64, 128), mel_bins=(5, 10, 20), stft_weight=1.0, stft_windows=(64, 128)),
        disc=DiscriminatorConfig(periods=(2, 3), period_channels=2, stft_windows=(64,), stft_channels=2),
        optim=OptimConfig(lr=2e-3, disc_lr=1e-3),
        distill=DistillConfig(teacher=TeacherConfig(kind="random", dim=8, frame_rate=50.0)),
        steps=8, checkpoint_every=0, log_every=1, tensorboard=False, quantize_prob=0.5, quantizer_dropout=0.5,
        threads=1)
    return cfg.replace(**changes)


def test_tiny_training_losses_finite_and_falling(tmp_path, one_thread):
    cfg = tiny_config(make_corpus(tmp_path / "data"))
    trainer = CodecTrainer(cfg, tmp_path / "run")
    results = trainer.fit()
    assert [r.step for r in results] == list(range(1, 9))
    for r in results:
        assert all(np.isfinite(v) for v in r.losses.values()), r.losses
        assert {"mel", "stft", "adv", "feature", "disc", "distill", "penalty", "total"} <= set(r.losses)
    mel = [r.losses["mel"] for r in results]
    assert np.mean(mel[-3:]) < np.mean(mel[:3])
    # the run directory has the log and a final checkpoint
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000008"


def test_resume_continues_identically(tmp_path, one_thread):
    manifest = make_corpus(tmp_path / "data")
    # dead-code checks every 3 steps: the codebooks' usage statistics and step counters (runtime state
    # outside the model file) must come back too
    cfg = tiny_config(manifest, steps=5, checkpoint_every=2, quantizer_options={"dead_code": {"check_every": 3}})
    straight = CodecTrainer(cfg, tmp_path / "a").fit()
    first = CodecTrainer(cfg, tmp_path / "b").fit(steps=2)
    assert [r.losses["total"] for r in first] == [r.losses["total"] for r in straight[:2]]
    resumed_trainer = CodecTrainer(cfg, tmp_path / "b")
    assert resumed_trainer.state.step == 2 and resumed_trainer.state.data_position == 2
    resumed = resumed_trainer.fit()
    assert [r.step for r in resumed] == [3, 4, 5]
    for a, b in zip(straight[2:], resumed):
        for k in ("total", "mel", "distill", "disc", "adv"):
            assert a.losses[k] == b.losses[k], (k, a.losses[k], b.losses[k])
    # and the weights end up equal
    wa = CodecTrainer(cfg, tmp_path / "a").generator.state_dict()
    wb = resumed_trainer.generator.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_no_resume_starts_over_and_bad_checkpoint_is_named(tmp_path, one_thread):
    manifest = make_corpus(tmp_path / "data")
    cfg = tiny_config(manifest, steps=1, distill=DistillConfig())
    CodecTrainer(cfg, tmp_path / "r").fit()
    assert CodecTrainer(cfg, tmp_path / "r", resume=False).state.step == 0
    (tmp_path / "r" / "checkpoints" / "step-00000001" / "optim.safetensors").unlink()
    from speechtok.codec.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="optim.safetensors"):
        CodecTrainer(cfg, tmp_path / "r")


def test_cli_train_codec(tmp_path, one_thread):
    from click.testing import CliRunner

    from speechtok.cli.train import train

    manifest = make_corpus(tmp_path / "data")
    cfg = tiny_config(manifest, steps=2).to_dict()
    cfg["data"]["train"] = ["data/manifest.jsonl"]  # relative to the config file
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    res = CliRunner().invoke(train, ["codec", str(cfg_path), "--out", str(tmp_path / "run"),
                                     "--set", "steps=3", "--set", "distill.weight=0.5"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["steps"] == 3 and saved["distill"]["weight"] == 0.5
    assert (tmp_path / "run" / "checkpoints" / "step-00000003").is_dir()
    bad = CliRunner().invoke(train, ["codec", str(cfg_path), "--out", str(tmp_path / "r2"), "--set", "optim.lrr=1"])
    assert bad.exit_code != 0 and "lrr" in bad.output
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*"))
    res = CliRunner().invoke(train, ["export", str(cfg_path), "--run", str(tmp_path / "run"), "--out",
                                     str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*")) == before  # run untouched
    import speechtok

    assert speechtok.load(tmp_path / "model").sample_rate == 8000
    res = CliRunner().invoke(train, ["cache-teacher", str(cfg_path), "--out", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert len(index["items"]) == 6 and index["teacher"]["kind"] == "random"
    # training from the cache
    res = CliRunner().invoke(train, ["codec", str(cfg_path), "--out", str(tmp_path / "run3"), "--set", "steps=1",
                                     "--set", "distill.teacher.kind=cached",
                                     "--set", f"distill.teacher.path={tmp_path / 'cache'}"])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "run3" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < row["distill"] < 2.0


def test_bf16_autocast_step_on_cpu(tmp_path, one_thread):
    cfg = tiny_config(make_corpus(tmp_path / "data"), steps=2, amp="bf16")
    trainer = CodecTrainer(cfg, tmp_path / "run")
    assert trainer.amp_dtype == torch.bfloat16
    results = trainer.fit()
    assert all(np.isfinite(v) for r in results for v in r.losses.values())


def test_export_loads_with_speechtok_and_logs_tensorboard(tmp_path, one_thread):
    import speechtok

    manifest = make_corpus(tmp_path / "data")
    cfg = tiny_config(manifest, steps=2, tensorboard=True, sample_every=2, valid_every=2)
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, valid=(str(manifest),), valid_items=2))
    trainer = CodecTrainer(cfg, tmp_path / "run")
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "valid" and np.isfinite(r["mel"]) for r in rows)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    out = trainer.export(tmp_path / "model", name="tiny-trained")
    tok = speechtok.load(out)
    sd = trainer.generator.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in tok.model.state_dict().items())
    wav = torch.randn(1, 1, 800) * 0.1
    codes = tok.encode(wav, sample_rate=8000)
    assert codes.num_codebooks == 4 and codes.model_id.startswith("tiny-trained@")
    assert tok.decode(codes).audio.shape[-1] >= 800


_DDP_SCRIPT = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from speechtok.codec.train import ddp
from speechtok.codec.train.config import load_train_config
from speechtok.codec.train.trainer import CodecTrainer

torch.set_num_threads(1)
trainer = CodecTrainer(load_train_config(sys.argv[1]), sys.argv[2])
results = trainer.fit()
rank = trainer.ctx.rank
assert trainer.ctx.world_size == 2
save_file({k: v.contiguous() for k, v in trainer.generator.state_dict().items()}, f"{sys.argv[3]}/rank{rank}.safetensors")
Path(f"{sys.argv[3]}/rank{rank}.json").write_text(json.dumps([r.losses["mel"] for r in results]))
ddp.shutdown(trainer.ctx)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    """torchrun with 2 CPU (gloo) processes: replicas stay identical, ranks see different crops."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    manifest = make_corpus(tmp_path / "data", n=8)
    cfg = tiny_config(manifest, steps=2, checkpoint_every=0, device="cpu")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "worker.py").write_text(_DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(tmp_path / "worker.py"), str(tmp_path / "cfg.json"), str(tmp_path / "run"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged: identical replicas
    la, lb = json.loads((tmp_path / "rank0.json").read_text()), json.loads((tmp_path / "rank1.json").read_text())
    assert la != lb  # ranks trained on different crops
    assert (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir()


def test_speechtokenizer_topology_distills_into_rvq_level1(tmp_path, one_thread):
    from speechtok.codec.quantization import ResidualVQ

    cfg = tiny_config(make_corpus(tmp_path / "data"), steps=2, quantizer_options={"kind": "rvq"})
    trainer = CodecTrainer(cfg, tmp_path / "run")
    assert isinstance(trainer.generator.quantizer, ResidualVQ) and trainer.head is not None
    results = trainer.fit()
    assert all(np.isfinite(r.losses["distill"]) and r.losses["distill"] > 0 for r in results)
    _assert_export_rebuilds(trainer, tmp_path / "st")


def _assert_export_rebuilds(trainer, directory):
    """The exported model directory rebuilds the trained architecture and encodes as the trainer's codec."""
    import speechtok

    tok = speechtok.load(trainer.export(directory))
    assert tok.cfg == trainer.codec_config
    wav = torch.randn(1, 1, 4 * tok.hop_length)
    trainer.generator.eval()
    with torch.no_grad():
        ref = trainer.generator.encode(wav)
    assert torch.equal(tok.encode(wav, sample_rate=tok.sample_rate).codes, ref)
    return tok


def test_factorized_lookup_exports_and_reloads(tmp_path, one_thread):
    from speechtok.codec.quantization.codebook import FactorizedCodebook

    cfg = tiny_config(make_corpus(tmp_path / "data"), steps=2,
                      quantizer_options={"lookup": "factorized", "codebook_dim": 4})
    trainer = CodecTrainer(cfg, tmp_path / "run")
    trainer.fit()
    assert trainer.codec_config.quantizer.lookup == "factorized"
    tok = _assert_export_rebuilds(trainer, tmp_path / "m")
    books = [m for m in tok.model.modules() if isinstance(m, FactorizedCodebook)]
    assert books and all(b.dim == 4 for b in books)


def test_autoencoder_warmup_then_kmeans_on_current_latents(tmp_path, one_thread, monkeypatch):
    """Before ``quantize_start_step`` the decoder gets the continuous latent; at it every codebook
    runs k-means again, on the latents of that step; a resume across the switch is exact."""
    from speechtok.codec.quantization import codebook as cb

    calls = []
    real = cb.kmeans

    def spy(data, *a, **k):
        calls.append(data.clone())
        return real(data, *a, **k)

    monkeypatch.setattr(cb, "kmeans", spy)
    cfg = tiny_config(make_corpus(tmp_path / "data"), steps=5, checkpoint_every=1, quantize_start_step=3,
                      quantize_prob=1.0, quantizer_dropout=0.0)
    trainer = CodecTrainer(cfg, tmp_path / "a")
    n_books = trainer.generator.cfg.quantizer.n_q
    seen = []
    orig = trainer.step_module.forward

    def record(x, lengths):
        seen.append(trainer.step_module.quantize_prob)
        return orig(x, lengths)

    trainer.step_module.forward = record
    straight = trainer.fit()
    assert seen == [0.0, 0.0, 0.0, 1.0, 1.0]
    # no commitment pull while nothing is quantized (it would shrink the unused input projection)
    assert ["penalty" in r.losses for r in straight] == [False, False, False, True, True]
    # k-means at step 1 (first batch) and again at step 4 (the switch), once per codebook
    assert len(calls) == 2 * n_books
    assert not torch.equal(calls[0], calls[n_books])  # re-initialised from other (trained) latents
    # resume from step 3 (just before the switch) continues identically
    monkeypatch.setattr(cb, "kmeans", real)
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for d in (tmp_path / "b" / "checkpoints").iterdir():
        if d.name.startswith("step-") and int(d.name.split("-")[1]) > 3:
            shutil.rmtree(d)
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step-00000003")
    resumed = CodecTrainer(cfg, tmp_path / "b")
    assert resumed.state.step == 3
    out = resumed.fit()
    assert [r.losses["total"] for r in out] == [r.losses["total"] for r in straight[3:]]


def test_distill_target_norm_reaches_the_loss(tmp_path, one_thread):
    """The trainer's distillation loss is the one of `cfg.distill.target_norm` on the same batch."""
    manifest = make_corpus(tmp_path / "data")
    base = tiny_config(manifest, steps=1)
    raw = CodecTrainer(base, tmp_path / "a").fit()[0].losses["distill"]
    cfg = base.replace(distill=DistillConfig(teacher=base.distill.teacher, target_norm="utterance"))
    normed = CodecTrainer(cfg, tmp_path / "b").fit()[0].losses["distill"]
    assert np.isfinite(normed) and normed != raw
