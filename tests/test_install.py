"""The environment this test run was installed into is one a user can run: torch and torchaudio are
pinned to one exact, matching version pair, torchaudio's native library loads and resamples, and
`pip check` finds no broken requirement (but for moshi, installed with --no-deps on purpose).

A new torchaudio patch release once broke every fresh install (torchaudio 2.11.1's native library
does not load with torch 2.11.0, and its metadata only says ``torch>=2.11``): these tests fail on
such an install instead of 74 unrelated ones.
"""
from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# installed by the README's test command with --no-deps (its pins predate torch 2.11); see README
NO_DEPS_ON_PURPOSE = ("moshi",)


def _pin(name: str) -> str:
    m = re.search(rf'"{name}==([0-9][0-9.]*)"', PYPROJECT.read_text())
    assert m, f"pyproject.toml must pin {name} to one exact version (\"{name}==X.Y.Z\")"
    return m.group(1)


def test_torch_and_torchaudio_are_pinned_to_one_installed_pair():
    torch_pin, audio_pin = _pin("torch"), _pin("torchaudio")
    assert torch_pin == audio_pin, f"torch=={torch_pin} and torchaudio=={audio_pin} are not a matching pair"
    assert version("torch").split("+")[0] == torch_pin
    assert version("torchaudio").split("+")[0] == audio_pin


def test_torchaudio_native_library_loads_and_resamples():
    # a fresh interpreter: the import is what fails on a mismatched pair (undefined symbol)
    code = ("import torch, torchaudio, torchaudio.functional as F\n"
            "from torchaudio._extension import _IS_TORCHAUDIO_EXT_AVAILABLE as ok\n"
            "assert ok, 'torchaudio native extension not available'\n"
            "torch.ops._torchaudio.is_align_available()\n"
            "y = F.resample(torch.ones(1, 22050), 22050, 16000)\n"
            "assert y.shape == (1, 16000), y.shape\n"
            "import speechtok.audio\n"
            "w = speechtok.audio.resample(torch.ones(1, 441), 44100, 16000)\n"
            "assert w.shape == (1, 160), w.shape\n")
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_pip_check_is_clean():
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    broken = [line for line in r.stdout.splitlines()
              if line.strip() and not line.startswith(NO_DEPS_ON_PURPOSE) and "No broken requirements" not in line]
    assert not broken, "pip check:\n" + "\n".join(broken)
