"""Hostile and careless input to speechtok.units and `speechtok units ...` (files made here).

Covers: a feature store's extractor.json can never turn on pickle loading or name a checkpoint;
sizes/values in feature stores, k-means files and units config.json are checked before anything is
allocated (one-line errors naming the file and key); the API and the CLI write the same
extractor.json; user-trained tokenizers get their own name; CLI misuse gives one-line errors and
no partial output.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import speechtok
from speechtok.cli.units import units
from speechtok.registry import ModelLoadError
from speechtok.units.api import EXTRACTOR_FILE, extract_to_store, make_extractor, train_unit_tokenizer
from speechtok.units.features.base import FeatureError, FeatureSpec
from speechtok.units.featstore import FeatureStore, FeatureWriter
from speechtok.units.kmeans import KMeansModel


def _fails_cleanly(res, *words):
    """A CLI result: non-zero exit, one line of error (no traceback) containing ``words``."""
    out = res.output.strip()
    assert res.exit_code != 0, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert len(out.splitlines()) == 1 or out.startswith("Usage:"), out
    assert "\x1b" not in out and "Traceback" not in out
    for w in words:
        assert w in out, out


def _write_store(directory: Path, spec: FeatureSpec, rows: int = 40) -> Path:
    g = torch.Generator().manual_seed(0)
    with FeatureWriter(directory, spec) as w:
        w.add("a", torch.randn(rows // 2, spec.dim, generator=g))
        w.add("b", torch.randn(rows - rows // 2, spec.dim, generator=g))
    return directory


HUBERT_SPEC = FeatureSpec(kind="hubert", layer=1, frame_rate=50.0, dim=8, sample_rate=16000,
                          checkpoint_hash="0" * 64)


class _Payload:
    """Unpickling this creates ``marker`` (stands for arbitrary code run by a pickle)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def evil_store(tmp_path):
    store = _write_store(tmp_path / "feats", HUBERT_SPEC)
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "cfg": {}}, evil)
    # the payload works, and only the user's explicit opt-in runs it: the loader with trust_pickle=True
    from speechtok.units.features.ssl_import import load_fairseq_ssl

    with pytest.raises(Exception):  # the payload is no checkpoint; it has run by then
        load_fairseq_ssl(evil, layer=1, trust_pickle=True)
    assert marker.exists()
    marker.unlink()
    return store, evil, marker


@pytest.mark.parametrize("legacy", [True, False])
def test_extractor_json_cannot_turn_on_pickle(evil_store, tmp_path, legacy):
    store, evil, marker = evil_store
    if legacy:  # the CLI's old description
        desc = {"kind": "hubert", "checkpoint": str(evil), "layer": 1, "trust_pickle": True}
    else:
        desc = {"format": "speechtok.extractor", "format_version": 1, "checkpoint": str(evil), "trust_pickle": True,
                "extractor": {"type": "ssl", "config": {"checkpoint": str(evil), "trust_pickle": True}}}
    (store / EXTRACTOR_FILE).write_text(json.dumps(desc))
    res = CliRunner().invoke(units, ["train-kmeans", str(store), str(tmp_path / "tok"), "--k", "2"])
    _fails_cleanly(res, "--checkpoint")
    assert not marker.exists() and not (tmp_path / "tok").exists()


def test_checkpoint_pickle_needs_the_users_flag(evil_store, tmp_path):
    store, evil, marker = evil_store
    (store / EXTRACTOR_FILE).write_text(json.dumps({"kind": "hubert", "trust_pickle": True}))
    res = CliRunner().invoke(units, ["train-kmeans", str(store), str(tmp_path / "tok"), "--k", "2",
                                     "--checkpoint", str(evil)])
    _fails_cleanly(res, "trust")
    assert not marker.exists() and not (tmp_path / "tok").exists()


# ----------------------------------------------------------------- API and CLI write the same description
@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    import soundfile as sf

    root = tmp_path_factory.mktemp("wavs")
    g = np.random.default_rng(0)
    for i, n in enumerate((8000, 12000, 6000)):
        sf.write(str(root / f"u{i}.wav"), (0.1 * g.standard_normal(n)).astype(np.float32), 16000)
    return root


def test_api_and_cli_write_the_same_extractor_json(wavs, tmp_path):
    res = CliRunner().invoke(units, ["features", str(wavs), str(tmp_path / "cli"), "--kind", "logmel"])
    assert res.exit_code == 0, res.output
    extract_to_store(str(wavs), make_extractor("logmel"), tmp_path / "api")
    a = json.loads((tmp_path / "cli" / EXTRACTOR_FILE).read_text())
    b = json.loads((tmp_path / "api" / EXTRACTOR_FILE).read_text())
    assert a == b and a["format"] == "speechtok.extractor" and "trust_pickle" not in json.dumps(a)


def test_user_trained_tokenizer_has_its_own_name(wavs, tmp_path):
    store = extract_to_store(str(wavs), make_extractor("mfcc"), tmp_path / "feats")
    tok = train_unit_tokenizer(store, make_extractor("mfcc"), n_clusters=4, dedup=True)
    assert tok.name == "mfcc-km4-dedup" and tok.model_id.startswith("mfcc-km4-dedup@")
    r = CliRunner()
    res = r.invoke(units, ["train-kmeans", str(tmp_path / "feats"), str(tmp_path / "my units"), "-k", "4"])
    assert res.exit_code == 0, res.output
    assert speechtok.load(tmp_path / "my units").model_id.startswith("my-units@")
    res = r.invoke(units, ["train-kmeans", str(tmp_path / "feats"), str(tmp_path / "t2"), "-k", "4", "--name", "lab-v1"])
    assert res.exit_code == 0, res.output
    assert speechtok.load(tmp_path / "t2").model_id.startswith("lab-v1@")
    res = r.invoke(units, ["train-kmeans", str(tmp_path / "feats"), str(tmp_path / "t3"), "-k", "4", "--name", "a b\x1b"])
    _fails_cleanly(res, "--name")
    assert not (tmp_path / "t3").exists()


# ----------------------------------------------------------------- hostile values in files
@pytest.fixture()
def mfcc_store(tmp_path):
    return _write_store(tmp_path / "fs", make_extractor("mfcc").spec)


@pytest.mark.parametrize("edit, words", [
    (lambda ix: ix.update(dim=2 ** 40), ["'dim'", "out of range"]),
    (lambda ix: ix["spec"].update(dim=-3), ["'dim'"]),
    (lambda ix: ix.update(num_rows="40"), ["'num_rows' must be int"]),
    (lambda ix: ix.pop("spec"), ["lacks 'spec'"]),
    (lambda ix: ix["shards"][0].update(file="../../etc/passwd.safetensors"), ["inside the store directory"]),
    (lambda ix: ix["utterances"][1].update(length=10 ** 9), ["past the"]),
    (lambda ix: ix["shards"][0].update(rows=10 ** 12) or ix.update(num_rows=10 ** 12), ["shard"]),
])
def test_hostile_feature_store_index(mfcc_store, tmp_path, edit, words):
    path = mfcc_store / "index.json"
    ix = json.loads(path.read_text())
    edit(ix)
    path.write_text(json.dumps(ix))
    with pytest.raises(FeatureError) as e:
        s = FeatureStore(mfcc_store)
        s.sample(10 ** 6)  # a lie about shard sizes shows when a shard is opened
    assert "index.json" in str(e.value) or "shard" in str(e.value)
    for w in words:
        assert w in str(e.value)
    res = CliRunner().invoke(units, ["train-kmeans", str(mfcc_store), str(tmp_path / "km.st"), "-k", "2",
                                     "--centroids-only"])
    _fails_cleanly(res)
    assert not (tmp_path / "km.st").exists()


def test_hostile_kmeans_files(tmp_path):
    from safetensors.torch import save_file

    spec = make_extractor("mfcc").spec
    good = {"format": "speechtok.kmeans", "format_version": "1", "spec": json.dumps(spec.to_dict()), "info": "{}"}
    cases = [({"centroids": torch.zeros(4, 39)}, {**good, "spec": "{not json"}, "not valid JSON"),
             ({"centroids": torch.zeros(4, 39)}, {**good, "spec": json.dumps({**spec.to_dict(), "dim": 7})}, "dim"),
             ({"centroids": torch.zeros(4, 39)}, {**good, "spec": json.dumps({**spec.to_dict(), "dim": "39"})},
              "'dim' must be int"),
             ({"centroids": torch.zeros(4, 39)}, {**good, "info": "[1]"}, "'info'"),
             ({"centroids": torch.full((4, 39), float("nan"))}, good, "NaN"),
             ({"centroids": torch.zeros(4, 3, 2)}, good, "[K, D]"),
             ({"centroids": torch.zeros(4, 39, dtype=torch.long)}, good, "float")]
    for i, (tensors, meta, word) in enumerate(cases):
        p = tmp_path / f"km{i}.safetensors"
        save_file(tensors, str(p), metadata=meta)
        with pytest.raises(FeatureError, match=None) as e:
            KMeansModel.load(p)
        assert str(p) in str(e.value) and word in str(e.value), (i, str(e.value))


@pytest.fixture()
def units_dir(tmp_path):
    from speechtok.units.tokenizer import UnitTokenizer
    from speechtok.units.vocoder import build_vocoder, vocoder_config_for

    ext = make_extractor("mfcc")
    tok = UnitTokenizer(ext, KMeansModel(torch.randn(6, 39), ext.spec), name="tiny")
    tok.set_vocoder(build_vocoder(vocoder_config_for(tok, embed_dim=8, n_filters=4, context_layers=1)))
    tok.save(tmp_path / "tok")
    assert speechtok.load(tmp_path / "tok").model_id == tok.model_id
    return tmp_path / "tok"


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["config"].update(n_clusters=2 ** 40), ["'n_clusters'", "out of range"]),
    (lambda m: m["config"].update(n_clusters=6.0), ["'n_clusters' must be int"]),
    (lambda m: m["config"]["spec"].update(dim=-1), ["'dim'"]),
    (lambda m: m["config"].update(config_version=99), ["'config_version'"]),
    (lambda m: m["config"]["features"].pop("type"), ["lacks 'type'"]),
    (lambda m: m["config"]["features"]["config"].update(n_mels="80"), ["'n_mels' must be int"]),
    (lambda m: m["config"]["features"]["config"].update(sample_rate=10 ** 12), ["'sample_rate'"]),
    (lambda m: m["config"]["vocoder"]["config"].update(n_units="many"), ["'n_units' must be int"]),
    (lambda m: m["config"]["vocoder"]["config"].update(embed_dim=10 ** 9), ["'embed_dim'", "out of range"]),
    (lambda m: m["config"]["vocoder"]["config"].update(context_layers=40), ["do not match its config"]),
    (lambda m: m["config"]["vocoder"].update(version="1"), ["'version' must be int"]),
    (lambda m: m["config"]["segmenter"] is None and m["config"].update(segmenter={"method": "mincut",
                                                                                 "target_rate": -1}),
     ["'target_rate'"]),
    (lambda m: m.update(name="evil\x1b[2J\nname"), ["name", "\\x1b"]),
])
def test_hostile_units_config(units_dir, edit, words):
    path = units_dir / "config.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError) as e:
        speechtok.load(units_dir)
    msg = str(e.value)
    assert "config.json" in msg and "\n" not in msg and "\x1b" not in msg, msg
    for w in words:
        assert w in msg, msg


def _tiny_ssl_dir(tmp_path) -> Path:
    from speechtok.units.features.ssl import SSLConfig, build_ssl_extractor
    from speechtok.units.tokenizer import UnitTokenizer

    arch = dict(extractor_mode="group_norm", extractor_conv_layer_config=[(8, 10, 5), (8, 3, 2)],
                extractor_conv_bias=False, encoder_embed_dim=16, encoder_projection_dropout=0.0,
                encoder_pos_conv_kernel=4, encoder_pos_conv_groups=2, encoder_num_layers=2, encoder_num_heads=2,
                encoder_attention_dropout=0.0, encoder_ff_interm_features=32, encoder_ff_interm_dropout=0.0,
                encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0)
    torch.manual_seed(0)
    ext = build_ssl_extractor(SSLConfig(kind="hubert", layer=1, arch=arch))
    tok = UnitTokenizer(ext, KMeansModel(torch.randn(4, 16), ext.spec), name="ssl-tiny")
    tok.save(tmp_path / "ssl")
    assert speechtok.load(tmp_path / "ssl").model_id == tok.model_id
    return tmp_path / "ssl"


@pytest.mark.parametrize("arch_edit, words", [
    ({"encoder_embed_dim": 64}, ["do not match the architecture"]),       # config disagrees with its weights
    ({"encoder_num_layers": 10 ** 6}, ["'encoder_num_layers'", "out of range"]),
    ({"extractor_conv_layer_config": [[8, 10, "5"]]}, ["extractor_conv_layer_config"]),
    ({"encoder_ff_interm_features": 1e9}, ["'encoder_ff_interm_features' must be int"]),
])
def test_hostile_ssl_config_refused_before_allocation(tmp_path, arch_edit, words):
    d = _tiny_ssl_dir(tmp_path)
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["features"]["config"]["arch"].update(arch_edit)
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError) as e:
        speechtok.load(d)
    for w in words:
        assert w in str(e.value), str(e.value)


# ----------------------------------------------------------------- CLI misuse
@pytest.mark.parametrize("args, words", [
    (["-k", "0"], ["-k"]), (["--k", "-3"], ["-k"]), (["-k", "2", "--sample-rows", "0"], ["--sample-rows"]),
    (["-k", "2", "--syllables", "mincut", "--target-rate", "0"], ["--target-rate"]),
    (["-k", "2", "--checkpoint", "/nonexistent/ckpt"], ["--checkpoint"]),
])
def test_train_kmeans_bad_options(mfcc_store, tmp_path, args, words):
    res = CliRunner().invoke(units, ["train-kmeans", str(mfcc_store), str(tmp_path / "tok"), *args])
    assert res.exit_code == 2, res.output
    assert all(w in res.output for w in words) and "Traceback" not in res.output
    assert not (tmp_path / "tok").exists()


def test_outputs_that_would_destroy_inputs(mfcc_store, tmp_path):
    before = sorted(p.name for p in mfcc_store.iterdir())
    r = CliRunner()
    for out in (mfcc_store, tmp_path):  # the store itself, a folder holding it
        res = r.invoke(units, ["train-kmeans", str(mfcc_store), str(out), "-k", "2"])
        _fails_cleanly(res, "input")
    res = r.invoke(units, ["train-kmeans", str(mfcc_store), str(mfcc_store / "index.json"), "-k", "2",
                           "--centroids-only"])
    _fails_cleanly(res, "feature store")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    res = r.invoke(units, ["train-kmeans", str(mfcc_store), str(tmp_path / "notes"), "-k", "2"])
    _fails_cleanly(res, "not a speechtok model directory")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in mfcc_store.iterdir()) == before
    FeatureStore(mfcc_store)
    p = tmp_path / "km.pkl"
    p.write_bytes(pickle.dumps([1]))
    _fails_cleanly(r.invoke(units, ["import-kmeans", str(p), str(p), "--trust-pickle"]), "input")
    assert p.read_bytes() == pickle.dumps([1])


def test_features_misuse_leaves_nothing(wavs, tmp_path):
    r = CliRunner()
    _fails_cleanly(r.invoke(units, ["features", str(wavs), str(wavs)]), "input")
    _fails_cleanly(r.invoke(units, ["features", str(tmp_path / "missing"), str(tmp_path / "o1")]), "missing")
    _fails_cleanly(r.invoke(units, ["features", str(wavs), str(tmp_path / "o2"), "--checkpoint", str(wavs)]),
                   "--checkpoint")
    _fails_cleanly(r.invoke(units, ["features", str(wavs), str(tmp_path / "o3"), "--batch-seconds", "-1"]),
                   "--batch-seconds")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_bytes((wavs / "u0.wav").read_bytes())
    (bad / "b.wav").write_bytes(b"RIFF\x00\x00\x00\x00not audio at all")
    _fails_cleanly(r.invoke(units, ["features", str(bad), str(tmp_path / "o4")]), "b.wav")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    if not torch.cuda.is_available():
        _fails_cleanly(r.invoke(units, ["features", str(wavs), str(tmp_path / "o5"), "--device", "cuda"]),
                       "--device")
        assert not (tmp_path / "o5").exists()


def test_bpe_and_vocoder_misuse(units_dir, tmp_path):
    r = CliRunner()
    codes = tmp_path / "c.safetensors"
    codes.write_bytes(b"x")
    _fails_cleanly(r.invoke(units, ["train-bpe", str(codes), str(tmp_path / "b"), "--vocab-size", "0"]),
                   "--vocab-size")
    _fails_cleanly(r.invoke(units, ["train-bpe", str(codes), str(tmp_path)]), "holds the input")
    _fails_cleanly(r.invoke(units, ["train-bpe", str(codes), str(units_dir), "--tokenizer", str(units_dir)]),
                   "input")
    cfg = tmp_path / "v.json"
    cfg.write_text("{}")
    _fails_cleanly(r.invoke(units, ["train-vocoder", str(units_dir), str(cfg), "--run-dir", str(tmp_path / "r"),
                                    "--steps", "-1"]), "--steps")
    _fails_cleanly(r.invoke(units, ["train-vocoder", str(units_dir), str(cfg), "--run-dir", str(tmp_path / "r"),
                                    "--export", str(units_dir)]), "input")
    assert not (tmp_path / "b").exists() and not (tmp_path / "r").exists()
    speechtok.load(units_dir)
