"""Shared fixtures: tiny audio made on the fly, plus the shipped real-speech sample (no shared/ data)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

SAMPLE = Path(__file__).resolve().parents[1] / "tokenizers" / "data" / "sample_ljspeech.flac"


def tone(seconds: float = 0.25, sample_rate: int = 16000, freq: float = 220.0, channels: int = 1) -> torch.Tensor:
    """A ``[C, S]`` sine with a little noise (deterministic)."""
    g = torch.Generator().manual_seed(int(freq * 10 + seconds * 1000))
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    x = 0.3 * torch.sin(2 * math.pi * freq * t) + 0.01 * torch.randn(t.shape, generator=g)
    return x.repeat(channels, 1)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    models gain nothing from threads, and on a shared machine a second thread mostly waits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make_tone():
    """The `tone` function (test modules cannot import conftest under --import-mode=importlib)."""
    return tone


@pytest.fixture
def sample_path() -> Path:
    assert SAMPLE.is_file(), f"shipped sample missing: {SAMPLE}"
    return SAMPLE


@pytest.fixture
def audio_dir(tmp_path) -> Path:
    """A small tree of wav/flac files of different lengths and rates."""
    import soundfile as sf

    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    for i, (name, sr, secs) in enumerate([("a.wav", 16000, 0.2), ("b.flac", 22050, 0.31),
                                          ("sub/c.wav", 8000, 0.15)]):
        sf.write(str(root / name), tone(secs, sr, 200 + 50 * i).T.numpy(), sr)
    return root
