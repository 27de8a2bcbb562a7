"""Unit vocoder: shapes and padding, decode of every code form, persistence, refusal, training, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import speechtok
from speechtok.units.vocoder import (UnitVocoderConfig, VocoderError, build_vocoder, check_vocoder_matches,
                                     vocoder_config_for)

TINY = dict(embed_dim=16, context_layers=2, context_kernel=3, n_filters=4, ratios=(8, 5, 4))
SAMPLE = Path(__file__).resolve().parents[2] / "tokenizers" / "data" / "sample_ljspeech.flac"


@pytest.fixture(scope="module")
def speech():
    """The shipped LJSpeech sample at 16 kHz: ``[1, S]``."""
    from speechtok.audio import load_audio

    wav, sr = load_audio(SAMPLE, sample_rate=16000)
    return wav


def make_tokenizer(speech, k: int = 12, **options):
    """MFCC unit tokenizer whose centroids are K frames of the sample (no k-means training needed)."""
    from speechtok.units.api import make_extractor
    from speechtok.units.kmeans import KMeansModel
    from speechtok.units.tokenizer import UnitTokenizer

    ext = make_extractor("mfcc")
    feats = ext.extract(speech[None], torch.tensor([speech.shape[-1]])).feats[0]
    idx = torch.linspace(0, feats.shape[0] - 1, k).long()
    return UnitTokenizer(ext, KMeansModel(feats[idx].clone(), ext.spec), **options)


def with_vocoder(tok, seed: int = 0):
    torch.manual_seed(seed)
    return tok.set_vocoder(build_vocoder(vocoder_config_for(tok, **TINY)))


def test_config_checks_hop():
    with pytest.raises(VocoderError, match="prod\\(ratios\\)"):
        UnitVocoderConfig(n_units=10, sample_rate=16000, frame_rate=50.0, ratios=(8, 5, 4))
    cfg = UnitVocoderConfig(n_units=10, sample_rate=16000, frame_rate=50.0, ratios=(8, 5, 4, 2))
    assert cfg.hop_length == 320 and UnitVocoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(VocoderError, match="unknown vocoder config keys"):
        UnitVocoderConfig.from_dict({**cfg.to_dict(), "n_filter": 3})
    from speechtok.units.vocoder import default_ratios

    assert default_ratios(160) == (8, 5, 4) and math.prod(default_ratios(320)) == 320
    with pytest.raises(VocoderError, match="prime factor"):
        default_ratios(11 * 16)


def test_shapes_and_padding_invariance():
    torch.manual_seed(0)
    voc = build_vocoder(UnitVocoderConfig(n_units=20, **TINY)).eval()
    units = torch.randint(0, 20, (3, 23))
    lengths = torch.tensor([23, 11, 0])
    units[1, 11:] = -1  # padding may hold anything
    with torch.no_grad():
        y = voc(units, lengths)
        assert y.shape == (3, 1, 23 * 160)
        for b in range(2):
            n = int(lengths[b])
            alone = voc(units[b:b + 1, :n], lengths[b:b + 1])
            torch.testing.assert_close(y[b:b + 1, :, : n * 160], alone, rtol=1e-5, atol=1e-6)
        assert float(y[1, :, 11 * 160:].abs().max()) == 0.0 and float(y[2].abs().max()) == 0.0
        assert float(y[0].abs().max()) > 0
    with pytest.raises(ValueError, match="out of range"):
        voc(torch.full((1, 4), 20), torch.tensor([4]))
    assert voc(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, dtype=torch.long)).shape == (2, 1, 0)


def test_decode_frame_dedup_and_lengths(speech):
    tok = with_vocoder(make_tokenizer(speech, dedup=True))
    assert tok.can_decode
    n = speech.shape[-1]
    batch = torch.zeros(2, 1, n)
    batch[0] = speech
    batch[1, 0, : n // 2] = speech[0, : n // 2]
    codes = tok.encode(batch, lengths=torch.tensor([n, n // 2]))
    assert codes.durations is not None and int(codes.lengths[0]) < int(codes.grid_frames()[0])
    wav = tok.decode(codes)
    assert wav.sample_rate == 16000 and wav.lengths.tolist() == [n, n // 2]
    assert torch.isfinite(wav.audio).all() and float(wav.audio[0].abs().max()) > 0
    expanded = tok.decode(codes.expand())
    torch.testing.assert_close(wav.audio, expanded.audio)
    # each item of the batch decodes as it does alone
    alone = tok.decode(tok.encode(speech[:, : n // 2]))
    torch.testing.assert_close(wav.audio[1:, :, : n // 2], alone.audio, rtol=1e-5, atol=1e-6)


def test_decode_bpe_codes(speech):
    from speechtok.bpe import UnitBPE

    for dedup in (False, True):
        tok = make_tokenizer(speech, dedup=dedup)
        units = tok.encode(speech)
        tok.set_bpe(UnitBPE.train(units, vocab_size=tok.units_codebook_sizes[0] + 8, min_frequency=1))
        with_vocoder(tok)
        bpe_codes = tok.encode(speech)
        assert bpe_codes.model_id == tok.bpe.model_id and int(bpe_codes.lengths[0]) < int(units.lengths[0])
        frames = tok.frame_units(bpe_codes)
        assert frames.durations is None and frames.model_id == tok.units_id
        assert int(frames.lengths[0]) == int(units.expand().lengths[0])
        wav = tok.decode(bpe_codes)
        assert wav.lengths.tolist() == [speech.shape[-1]] and torch.isfinite(wav.audio).all()
        if not dedup:  # BPE over frame units is exact
            assert torch.equal(frames.codes, units.codes)
            torch.testing.assert_close(wav.audio, tok.decode(units).audio)


def test_decode_syllable_codes(speech):
    from speechtok.units.segment import SegmenterConfig

    tok = with_vocoder(make_tokenizer(speech, segmenter=SegmenterConfig("greedy", target_rate=5.0)))
    codes = tok.encode(speech)
    assert codes.durations is not None
    wav = tok.decode(codes)
    assert wav.audio.shape[-1] == speech.shape[-1] and torch.isfinite(wav.audio).all()
    assert float(wav.audio.abs().max()) > 0


def test_no_vocoder_and_foreign_codes_refused(speech):
    tok = make_tokenizer(speech)
    assert not tok.can_decode
    codes = tok.encode(speech)
    with pytest.raises(Exception, match="train-vocoder"):
        tok.decode(codes)
    other = with_vocoder(make_tokenizer(speech, k=10))
    with pytest.raises(Exception, match="model"):
        other.decode(codes)


def test_save_load_round_trip_and_mismatch(speech, tmp_path):
    from speechtok.registry import ModelLoadError

    tok = with_vocoder(make_tokenizer(speech, k=12))
    codes = tok.encode(speech)
    before = tok.decode(codes).audio
    tok.save(tmp_path / "tok")
    loaded = speechtok.load(tmp_path / "tok")
    assert loaded.can_decode and loaded.model_id == tok.model_id
    assert torch.equal(loaded.decode(codes).audio, before)
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["config"]["vocoder"]["version"] == 1
    assert meta["config"]["vocoder"]["config"]["units_model_id"] == tok.units_id
    # a vocoder made for other units is refused on attach ...
    other = make_tokenizer(speech, k=10)
    with pytest.raises(VocoderError, match="trained for units"):
        other.set_vocoder(tok.vocoder)
    with pytest.raises(VocoderError):
        check_vocoder_matches(vocoder_config_for(other), tok)
    # ... and on load (a directory whose vocoder section names other units)
    meta["config"]["vocoder"]["config"]["units_model_id"] = "units@000000000000"
    (tmp_path / "tok" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="trained for units"):
        speechtok.load(tmp_path / "tok")
    # a directory without a vocoder (the older layout) still loads, and says how to get a decoder
    make_tokenizer(speech).save(tmp_path / "plain")
    plain = speechtok.load(tmp_path / "plain")
    assert not plain.can_decode
    with pytest.raises(Exception, match="train-vocoder"):
        plain.decode(plain.encode(speech))


def _train_config(data_dir: Path, steps: int) -> dict:
    return {"model": dict(TINY, ratios=list(TINY["ratios"])),
            "data": {"train": [str(data_dir)], "crop_seconds": 0.5, "batch_size": 4},
            "loss": {"adv_weight": 0.0, "feature_weight": 0.0, "mel_weight": 1.0,
                     "mel_windows": [64, 256, 1024], "mel_bins": [10, 40, 80]},
            "optim": {"lr": 0.01}, "steps": steps, "seed": 0, "log_every": 1, "checkpoint_every": 0,
            "tensorboard": False, "threads": 1}


@pytest.fixture(scope="module")
def trained(speech, tmp_path_factory):
    """A tiny vocoder trained for a few CPU steps on the sample; exported with its tokenizer."""
    import soundfile as sf

    from speechtok.codec.train.config import TrainConfig, from_dict
    from speechtok.units.vocoder_train import train_vocoder

    root = tmp_path_factory.mktemp("voc")
    (root / "data").mkdir()
    n = speech.shape[-1]
    for i, (a, b) in enumerate([(0, n), (0, n // 2), (n // 3, n), (n // 5, 4 * n // 5)]):
        sf.write(str(root / "data" / f"u{i}.wav"), speech[0, a:b].numpy(), 16000)
    tok = make_tokenizer(speech)
    tok.save(root / "tok")
    cfg = from_dict(TrainConfig, _train_config(root / "data", 30))
    run = train_vocoder(root / "tok", cfg, root / "run", export_to=root / "export")
    return root, run, tok


def test_training_smoke_and_export(trained, speech):
    root, run, tok = trained
    mel = [r.losses["mel"] for r in run.results]
    assert len(mel) == 30 and all(torch.isfinite(torch.tensor(mel)))
    assert sum(mel[-5:]) / 5 < 0.9 * sum(mel[:5]) / 5, mel
    assert (root / "run").is_dir() and list((root / "run").glob("*"))
    exported = speechtok.load(run.export_dir)
    assert exported.can_decode and exported.model_id == tok.model_id
    wav = exported.decode(tok.encode(speech))
    assert wav.audio.shape == (1, 1, speech.shape[-1]) and torch.isfinite(wav.audio).all()
    # the exported weights are the trained ones (not a fresh vocoder)
    trained_state = run.trainer.generator.vocoder.state_dict()
    assert all(torch.equal(v, trained_state[k]) for k, v in exported.vocoder.state_dict().items())


def test_cli_train_vocoder(trained, tmp_path):
    from click.testing import CliRunner

    from speechtok.cli.units import units

    root, _, _ = trained
    cfg_path = tmp_path / "voc.json"
    cfg_path.write_text(json.dumps(_train_config(root / "data", 3)))
    r = CliRunner()
    res = r.invoke(units, ["train-vocoder", str(root / "tok"), str(cfg_path), "--run-dir", str(tmp_path / "run"),
                           "--export", str(tmp_path / "out"), "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert "mel" in res.output and speechtok.load(tmp_path / "out").can_decode
    bad = _train_config(root / "data", 3)
    bad["model"]["n_units"] = 999
    cfg_path.write_text(json.dumps(bad))
    res = r.invoke(units, ["train-vocoder", str(root / "tok"), str(cfg_path), "--run-dir", str(tmp_path / "run2")])
    assert res.exit_code != 0 and "n_units" in res.output and "Traceback" not in res.output


def test_general_benchmark_scores_unit_resynthesis(trained, speech, tmp_path):
    """`speechtok bench` (the one runner for every tokenizer) decodes units through the vocoder."""
    import math

    import soundfile as sf

    from speechtok.benchmarks.runner import BenchConfig, run_benchmark

    root, run, _ = trained
    sf.write(str(tmp_path / "a.wav"), speech[0].numpy(), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "audio": "a.wav", "text": None, "speaker": "dev1",
                                                  "source": "dev"}) + "\n")
    tok = speechtok.load(run.export_dir)
    (row,) = run_benchmark([tok], str(tmp_path / "m.jsonl"), BenchConfig(max_items=1, asr=None, intrusive=False)).rows
    assert row.num_codebooks == 1 and row.bitrate > 0
    assert row.mel_distance > 0 and math.isfinite(row.si_sdr) and math.isfinite(row.decode_rtf)


def test_training_resumes_exactly(trained, tmp_path):
    from speechtok.codec.train.config import TrainConfig, from_dict
    from speechtok.units.vocoder_train import train_vocoder

    root, _, _ = trained
    cfg = from_dict(TrainConfig, {**_train_config(root / "data", 4), "checkpoint_every": 2})
    straight = train_vocoder(root / "tok", cfg, tmp_path / "a").results
    train_vocoder(root / "tok", cfg, tmp_path / "b", steps=2)
    resumed = train_vocoder(root / "tok", cfg, tmp_path / "b").results
    assert [r.step for r in resumed] == [3, 4]
    assert [r.losses["mel"] for r in resumed] == [r.losses["mel"] for r in straight[2:]]
    # the run directory belongs to that vocoder: other sizes (or units) are refused
    bigger = from_dict(TrainConfig, {**_train_config(root / "data", 6), "model": dict(TINY, embed_dim=24)})
    with pytest.raises(VocoderError, match="embed_dim"):
        train_vocoder(root / "tok", bigger, tmp_path / "b")
