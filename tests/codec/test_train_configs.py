"""Every shipped training config parses, and its model section builds (a typo must fail here, not
an hour into someone's run)."""
from pathlib import Path

import pytest

import speechtok.codec
import speechtok.units
from speechtok.codec.config import config_from_dict
from speechtok.codec.train.config import load_train_config

CODEC = sorted((Path(speechtok.codec.__file__).parent / "train" / "configs").glob("*.json"))
UNITS = sorted((Path(speechtok.units.__file__).parent / "configs").glob("*.json"))


def test_configs_are_found():
    assert len(CODEC) >= 3 and len(UNITS) >= 1


@pytest.mark.parametrize("path", CODEC, ids=lambda p: p.name)
def test_codec_training_config_parses_and_builds(path):
    cfg = load_train_config(path)
    codec = config_from_dict(cfg.model)
    assert codec.hop_length * codec.frame_rate == codec.sample_rate
    assert cfg.data.train == ()  # shipped configs name no data: the training commands take --data


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_units_training_config_parses(path):
    cfg = load_train_config(path)
    assert cfg.steps > 0 and cfg.distill.teacher is None
