"""Training building blocks: config files, data order/crops, losses, discriminators, checkpoints, export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechtok.codec.train.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from speechtok.codec.train.config import TrainConfig, TrainConfigError, load_train_config
from speechtok.codec.train.data import BatchSampler, CropDataset, DataError, list_utterances
from speechtok.codec.train.discriminators import Discriminators
from speechtok.codec.train.losses import (MultiScaleMelLoss, MultiScaleSTFTLoss, discriminator_loss,
                                          feature_matching_loss, generator_adversarial_loss)


# ---------------------------------------------------------------------------- config
def test_config_json_and_yaml_roundtrip(tmp_path):
    d = {"model": {"preset": "tiny"}, "data": {"train": ["m.jsonl"], "batch_size": 3, "crop_seconds": 0.5},
         "loss": {"mel_windows": [32, 64], "mel_bins": [5, 10]}, "optim": {"betas": [0.5, 0.9]},
         "distill": {"teacher": {"kind": "whisper", "path": "w"}, "weight": 2}, "steps": 7}
    (tmp_path / "c.json").write_text(json.dumps(d))
    yaml = pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    for name in ("c.json", "c.yaml"):
        cfg = load_train_config(tmp_path / name)
        assert cfg.data.batch_size == 3 and cfg.loss.mel_windows == (32, 64) and cfg.optim.betas == (0.5, 0.9)
        assert cfg.data.train == (str(tmp_path / "m.jsonl"),)  # relative to the file
        assert cfg.distill.teacher.path == str(tmp_path / "w") and cfg.distill.weight == 2.0
        assert cfg.steps == 7 and cfg.model == {"preset": "tiny"}
    # command-line overrides are relative to the working directory
    import os

    cwd = os.getcwd()
    try:
        os.chdir(tmp_path / "..")
        over = load_train_config(tmp_path / "c.json", {"data": {"valid": ["v.jsonl"]}, "optim": {"lr": 0.5}})
    finally:
        os.chdir(cwd)
    assert over.data.valid == (str(tmp_path.parent / "v.jsonl"),) and over.optim.lr == 0.5
    assert over.data.train == cfg.data.train
    # to_dict() is loadable again, unchanged
    (tmp_path / "again.json").write_text(json.dumps(cfg.to_dict()))
    assert load_train_config(tmp_path / "again.json") == cfg


@pytest.mark.parametrize("bad, match", [
    ({"data": {"batch_sise": 2}}, "batch_sise"),
    ({"steps": "ten"}, "steps"),
    ({"optim": {"betas": [0.1]}}, "betas"),
    ({"format_version": 99}, "format_version"),
    ({"quantize_prob": 1.5}, "quantize_prob"),
    ({"distill": {"loss": "l2"}}, "distill.loss"),
    ({"distill": {"target_norm": "global"}}, "distill.target_norm"),
    ({"loss": {"mel_windows": [32], "mel_bins": [5, 10]}}, "mel_bins"),
])
def test_config_errors_name_the_key_and_file(tmp_path, bad, match):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(TrainConfigError, match=match) as e:
        load_train_config(p)
    assert "bad.json" in str(e.value)


# ---------------------------------------------------------------------------- data
def _write(path, sr, seconds, value=0.1):
    import soundfile as sf

    n = int(sr * seconds)
    sf.write(path, (value * np.sin(np.arange(n) / 7.0)).astype(np.float32), sr)


def test_manifest_and_folder_listing(tmp_path):
    (tmp_path / "a").mkdir()
    _write(tmp_path / "a" / "x.wav", 16000, 0.5)
    _write(tmp_path / "a" / "y.flac", 8000, 0.2)
    rows = [{"id": "m1", "audio": "a/x.wav", "speaker": "s1", "sample_rate": 16000, "duration": 0.5},
            {"id": "m2", "audio": "a/y.flac", "speaker": "dev", "sample_rate": 8000, "duration": 0.2}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = list_utterances([str(tmp_path / "m.jsonl")], exclude_speakers=["dev"])
    assert [u.id for u in items] == ["m1"]
    folder = list_utterances([str(tmp_path / "a")], min_seconds=0.3)
    assert [(u.id, u.sample_rate) for u in folder] == [("x", 16000)]
    with pytest.raises(DataError, match="duplicate"):
        list_utterances([str(tmp_path / "m.jsonl"), str(tmp_path / "m.jsonl")])
    with pytest.raises(DataError, match="nope"):
        list_utterances([str(tmp_path / "nope")])
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="broken.jsonl:1"):
        list_utterances([str(tmp_path / "broken.jsonl")])


def test_batches_resume_at_any_position_and_ranks_are_disjoint():
    full = BatchSampler(10, 3, seed=5)
    seq = [b for _, b in zip(range(7), full)]  # 3 batches/epoch: crosses two epoch boundaries
    assert all(len(b) == 3 for b in seq)
    assert len({k[2] for b in seq[:3] for k in b}) == 9  # an epoch has no repeats
    assert [k[2] for k in seq[0]] != [k[2] for k in seq[3]]  # epochs are reshuffled
    for start in (1, 3, 5):
        resumed = [b for _, b in zip(range(7 - start), BatchSampler(10, 3, seed=5, start=start))]
        assert resumed == seq[start:]
    r0 = next(iter(BatchSampler(10, 2, seed=1, rank=0, world_size=2)))
    r1 = next(iter(BatchSampler(10, 2, seed=1, rank=1, world_size=2)))
    assert not {k[2] for k in r0} & {k[2] for k in r1}
    with pytest.raises(DataError, match="batch_size"):
        BatchSampler(3, 4, seed=0)


def test_crops_are_resampled_seeded_and_padded(tmp_path):
    _write(tmp_path / "long.wav", 16000, 1.0)
    _write(tmp_path / "short.wav", 8000, 0.1)
    items = list_utterances([str(tmp_path)])
    ds = CropDataset(items, sample_rate=8000, crop_seconds=0.25, seed=3)
    a, n, uid, start = ds[(0, 0, 0)]
    assert uid == "long" and a.shape == (2000,) and n == 2000 and 0 <= start <= 0.75
    b = ds[(0, 0, 0)]
    assert torch.equal(a, b[0]) and b[3] == start  # pure function of the key
    assert ds[(1, 0, 0)][3] != start
    s, n, uid, start = ds[(0, 1, 1)]
    assert uid == "short" and n == 800 and start == 0.0 and torch.all(s[800:] == 0) and s[:800].abs().max() > 0


# ---------------------------------------------------------------------------- losses
def test_spectral_losses_zero_on_equal_and_differentiable():
    torch.manual_seed(0)
    y = torch.randn(2, 1, 4000) * 0.1
    mel = MultiScaleMelLoss(sample_rate=16000, windows=(64, 256), bins=(10, 40))
    stft = MultiScaleSTFTLoss(windows=(128, 512))
    assert float(mel(y, y)) == 0.0 and float(stft(y, y)) == 0.0
    x = (y + 0.05 * torch.randn_like(y)).requires_grad_()
    loss = mel(x, y) + stft(x, y)
    assert float(loss) > 0
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # a louder error costs more
    assert float(mel(y + 0.2 * torch.randn_like(y), y)) > float(mel(x.detach(), y))


def test_gan_losses_and_discriminators():
    torch.manual_seed(0)
    d = Discriminators(periods=(2, 3), period_channels=2, stft_windows=(64, 128), stft_channels=2)
    x = torch.randn(2, 1, 1001)
    out = d(x)
    assert len(out.logits) == 4 and len(out.features) == 4 and all(len(f) >= 4 for f in out.features)
    assert out.logits[0].shape[0] == 2
    ones = [torch.ones(3), torch.ones(2, 2)]
    zeros = [torch.zeros(3), torch.zeros(2, 2)]
    assert float(discriminator_loss(ones, zeros)) == 0.0 and float(generator_adversarial_loss(ones)) == 0.0
    assert float(discriminator_loss(zeros, ones)) == 2.0 and float(generator_adversarial_loss(zeros)) == 1.0
    assert float(discriminator_loss(ones, [-z - 1 for z in ones], "hinge")) == 0.0
    with pytest.raises(ValueError, match="wasserstein"):
        generator_adversarial_loss(ones, "wasserstein")
    fm = feature_matching_loss(out.features, d(x).features)
    assert float(fm) == 0.0
    assert float(feature_matching_loss(out.features, d(x + 0.1).features)) > 0


# ---------------------------------------------------------------------------- checkpoints
def _net_and_opt(seed):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    return net, torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.99))


def _step(net, opt):
    """One step on random data drawn from the global RNG; returns the new parameters."""
    opt.zero_grad()
    net(torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    return [p.detach().clone() for p in net.parameters()] + [b.clone() for b in net.buffers()]


def test_checkpoint_restores_weights_optimizer_and_rng(tmp_path):
    net, opt = _net_and_opt(0)
    for _ in range(3):
        _step(net, opt)
    save_checkpoint(tmp_path, modules={"net": net}, optimizers={"opt": opt},
                    state=TrainingState(step=3, data_position=3, extra={"k": 1}), config={"a": 1})
    want = _step(net, opt)
    net2, opt2 = _net_and_opt(123)
    st = load_checkpoint(tmp_path, modules={"net": net2}, optimizers={"opt": opt2})
    assert (st.step, st.data_position, st.extra) == (3, 3, {"k": 1})
    got = _step(net2, opt2)  # same weights, Adam moments and RNG -> the very same step
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    # without the RNG the data differ, without the optimizer state the update does
    net3, opt3 = _net_and_opt(5)
    load_checkpoint(tmp_path, modules={"net": net3}, optimizers={}, restore_rng=True)
    assert not all(torch.equal(a, b) for a, b in zip(want, _step(net3, opt3)))
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_checkpoint_keeps_newest_and_rejects_mismatch(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    for s in (1, 2, 3):
        save_checkpoint(tmp_path, modules={"net": net}, optimizers={"opt": opt}, state=TrainingState(step=s), keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000003"]
    from speechtok.codec.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="net"):
        load_checkpoint(tmp_path, modules={"net": torch.nn.Linear(3, 2)}, optimizers={})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty", modules={}, optimizers={})


def test_checkpoint_mid_kmeans_pool_and_dead_code_counters_resume_exactly(tmp_path):
    """A quantizer checkpointed while its k-means pool is half gathered (and between dead-code checks)
    continues exactly as without the interruption: pool, counters and usage statistics come back."""
    from speechtok.codec.quantization import DeadCodePolicy, KMeansInit, ResidualVQ
    from speechtok.codec.train.checkpoint import CheckpointError

    def make():
        torch.manual_seed(0)
        return ResidualVQ(6, 6, n_q=2, codebook_size=16, kmeans_init=KMeansInit(batches=3, iters=3),
                          dead_code=DeadCodePolicy(check_every=3)).train()

    batches = [torch.randn(2, 6, 10, generator=torch.Generator().manual_seed(i)) for i in range(7)]
    straight = make()
    for x in batches:
        straight(x)
    first = make()
    first(batches[0])  # one of the three k-means batches pooled
    cb = first.layers[0].codebook
    assert cb._pool_batches == 1 and not cb.is_initialized()
    save_checkpoint(tmp_path, modules={"q": first}, optimizers={}, state=TrainingState(step=1))
    resumed = make()
    load_checkpoint(tmp_path, modules={"q": resumed}, optimizers={}, restore_rng=False)
    for x in batches[1:]:
        resumed(x)
    for a, b in zip(straight.layers, resumed.layers):
        assert torch.equal(a.codebook.table(), b.codebook.table())
        assert torch.equal(a.codebook.code_usage, b.codebook.code_usage) and a.codebook._steps == b.codebook._steps
    # a checkpoint of another quantizer shape is refused by name
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path, modules={"q": ResidualVQ(6, 6, n_q=2, codebook_size=8)}, optimizers={})


def test_train_config_defaults_are_consistent():
    cfg = TrainConfig()
    assert len(cfg.loss.mel_windows) == len(cfg.loss.mel_bins)
    assert cfg.quantize_prob == 1.0 and cfg.amp == "auto"


def test_no_quantization_rate_decodes_the_continuous_latent():
    from speechtok.codec.train.generator import GeneratorStep, build_generator

    torch.manual_seed(0)
    model, cfg = build_generator({"preset": "tiny"})
    x = torch.randn(3, 1, cfg.hop_length * 6) * 0.1
    lengths = torch.full((3,), x.shape[-1])
    never = GeneratorStep(model, None, quantize_prob=0.0).train()
    with torch.no_grad():
        y = never(x, lengths).x
        assert torch.allclose(y, model.decode_latent(model.encode_latent(x)), atol=1e-6)
        model.eval()
        quantized = model.decode(model.encode(x))
    model.train()
    assert not torch.allclose(y, quantized, atol=1e-4)  # quantization changes the output
    with pytest.raises(ValueError, match="quantize_prob"):
        GeneratorStep(torch.nn.Linear(2, 2), None, quantize_prob=0.5)
