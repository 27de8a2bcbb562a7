"""Identity: a model's id covers everything that changes its codes or audio (config as well as
weights), and decode checks the codes' rates and codebooks against the model, not only the id."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import speechtok
from speechtok.codes import CodesError
from speechtok.registry import BUILTINS


def _copy_builtin(tmp_path, name="speechtok-16k-50hz"):
    d = tmp_path / "copy"
    shutil.copytree(BUILTINS[name].path, d)
    return d


def _edit(d, fn):
    meta = json.loads((d / "config.json").read_text())
    fn(meta["config"])
    (d / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit", [
    lambda c: c.update(sample_rate=c["sample_rate"] * 2),
    lambda c: c["transformer"].update(context=c["transformer"]["context"] // 2),
    lambda c: c.update(window_frames=c["window_frames"] + 1),
], ids=["sample_rate", "context", "window_frames"])
def test_config_change_changes_model_id(tmp_path, edit):
    base = speechtok.load("speechtok-16k-50hz", encoder_only=True)
    same = speechtok.load(_copy_builtin(tmp_path), encoder_only=True)
    assert same.model_id == base.model_id  # a plain copy is the same model
    d = tmp_path / "copy"
    _edit(d, edit)
    changed = speechtok.load(d, encoder_only=True)
    assert changed.model_id != base.model_id
    assert changed.model_id.split("@")[0] == base.model_id.split("@")[0]


def test_model_id_same_for_encoder_only_and_full():
    assert speechtok.load("speechtok-16k-50hz").model_id == \
        speechtok.load("speechtok-16k-50hz", encoder_only=True).model_id


def test_codes_of_a_changed_copy_do_not_decode_with_the_original(tmp_path):
    d = _copy_builtin(tmp_path)
    _edit(d, lambda c: c.update(sample_rate=c["sample_rate"] * 2))
    other = speechtok.load(d)
    codes = other.encode(torch.zeros(1, 1, 3200), sample_rate=other.sample_rate)
    with pytest.raises(CodesError, match="made by model"):
        speechtok.load("speechtok-16k-50hz").decode(codes)


@pytest.mark.parametrize("change", [
    dict(frame_rate=25.0), dict(sample_rate=8000), dict(codebook_sizes=(128,))],
    ids=["frame_rate", "sample_rate", "codebook_sizes"])
def test_decode_checks_rates_and_codebooks_not_only_the_id(change):
    tok = speechtok.load("mulaw-16k")
    codes = tok.encode(torch.zeros(1, 1, 160), sample_rate=16000)
    forged = codes.with_(**change)  # same model_id, other rates: a hand-edited file
    with pytest.raises(CodesError, match="do not fit model"):
        tok.decode(forged)
    tok.decode(codes)  # the honest codes still decode


def test_units_decode_checks_rates_and_features_take_numpy():
    import numpy as np

    tok = speechtok.load("units-mfcc500-16k")
    wav = np.zeros((1, 1600), dtype=np.float32)
    feats = tok.features(wav, sample_rate=16000)  # numpy in, as encode takes it
    assert feats is not None
    codes = tok.encode(wav, sample_rate=16000)
    tok.decode(codes)
    with pytest.raises(CodesError, match="do not fit model"):
        tok.decode(codes.with_(frame_rate=codes.frame_rate / 2))


@pytest.mark.parametrize("edit", [
    lambda m: m.update(codebook_sizes=[10 ** 12]), lambda m: m.update(codebook_sizes="8"),
    lambda m: m.pop("base_model_id"), lambda m: m.update(frame_rate="fast"),
    lambda m: m.update(sample_rate=-1)], ids=["huge-size", "str-sizes", "no-base", "str-rate", "neg-sr"])
def test_unit_bpe_directory_values_are_checked(tmp_path, edit):
    from speechtok.bpe import UnitBPE

    codes = speechtok.load("mulaw-16k").encode(torch.randn(1, 1, 800) * 0.1, sample_rate=16000)
    bpe = UnitBPE.train([codes], vocab_size=300)
    d = bpe.save(tmp_path / "bpe")
    UnitBPE.load(d)  # the honest directory loads
    meta = json.loads((d / "bpe.json").read_text())
    edit(meta)
    (d / "bpe.json").write_text(json.dumps(meta))
    with pytest.raises(CodesError, match="bpe.json"):
        UnitBPE.load(d)


def test_units_config_cannot_swap_the_feature_extractor(tmp_path):
    """A units config.json whose extractor is not the one the centroids were trained on (another
    rate here; for Whisper, another model directory) is refused, not silently run."""
    from speechtok.registry import ModelLoadError

    d = _copy_builtin(tmp_path, "units-mfcc500-16k")
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["features"]["config"]["sample_rate"] = 8000
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="trained on"):
        speechtok.load(d)
