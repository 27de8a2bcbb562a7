"""Run logging: ``metrics.jsonl`` (always) and TensorBoard (when installed: extra ``train``).

Scalars go to both; audio samples only to TensorBoard. Only the main process logs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch


class RunLogger:
    """Append-only metrics log of a run directory; optional TensorBoard writer."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = None
        self._t0 = time.time()
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                import warnings

                warnings.warn("TensorBoard is not installed (pip install 'speechtok[train]'); "
                              "logging to metrics.jsonl only", stacklevel=2)
            else:
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": prefix, "time_s": round(time.time() - self._t0, 2), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int) -> None:
        """``wav`` ``[S]`` or ``[1, S]`` float in [-1, 1]."""
        if self.enabled and self.writer is not None:
            self.writer.add_audio(tag, wav.detach().float().cpu().reshape(1, -1).clamp(-1, 1), step,
                                  sample_rate=sample_rate)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    @staticmethod
    def read(run_dir: Path, split: Optional[str] = "train") -> list[dict]:
        """The logged rows of a run (for reports and tests)."""
        path = Path(run_dir) / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if split is None or r.get("split") == split]
