"""Named benchmark suites: a manifest of the shared data plus the settings that suit it.

``speechtok bench TOKENIZER --data real`` resolves a suite name to its manifest under the shared
data folder (``$SPEECHTOK_SHARED``, else ``../shared`` beside the repository); any other
``--data`` value is a manifest path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Suite:
    """A benchmark data set: ``manifest`` relative to the shared folder, and what it measures."""

    name: str
    manifest: str
    description: str


SUITES: dict[str, Suite] = {
    "real": Suite("real", "data/real/manifest.jsonl",
                  "LJSpeech, LibriSpeech, FSDD digits, Asterisk prompts: 8-22 kHz real speech, round-robin"),
    "tts": Suite("tts", "data/tts/manifest.jsonl", "Harvard sentences by 9 synthetic voices (16 kHz)"),
}


def shared_dir() -> Path:
    env = os.environ.get("SPEECHTOK_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def resolve_data(data: str) -> tuple[str, Optional[Suite]]:
    """``data`` as a manifest path: a suite name maps to its shared manifest; a path is kept."""
    if data in SUITES and not Path(data).exists():
        suite = SUITES[data]
        path = shared_dir() / suite.manifest
        if not path.is_file():
            raise FileNotFoundError(f"suite {data!r} needs {path} (set SPEECHTOK_SHARED to the shared folder)")
        return str(path), suite
    if not Path(data).is_file():
        raise FileNotFoundError(f"{data}: no such manifest, and not a suite name ({', '.join(SUITES)})")
    return data, None
