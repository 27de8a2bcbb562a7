"""Ray Data engine for `speechtok.preprocess` (``engine="ray"``; needs ``pip install speechtok[ray]``).

Each row of a Ray dataset is one pending shard of the job's plan; a pool of actors (each holding
one tokenizer) loads, encodes and commits whole shards with the same `ShardEncoder` as the local
engine, so the output bytes are identical. Workers write straight into the output directory: on a
multi-machine cluster it must be on a filesystem every node sees (NFS, Lustre, a FUSE mount).

``address=None`` starts a local cluster (``ray.init()``); otherwise ``ray.init(address=...)``
joins an existing one (``"auto"`` or ``"ray://host:10001"``). A cluster that is already
initialized in this process is reused.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Iterable, Optional

from .formats import safe_text
from .inputs import AudioItem

CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's address before giving up


def check_address(address: Optional[str], timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast, with one line naming the address, when a ``host:port`` or ``ray://host:port``
    cluster address cannot be reached over TCP (None and ``"auto"`` are left to Ray)."""
    if address is None or address == "auto":
        return
    where = f"Ray address {safe_text(address)!r}"
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{where}: expected host:port, ray://host:port or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise RuntimeError(f"{where}: no Ray cluster reachable ({e.strerror or type(e).__name__})") from e


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("engine='ray' needs Ray Data: pip install 'speechtok[ray]'") from e
    return ray


class _ShardWorker:
    """A Ray actor: builds the tokenizer once, then encodes whole shards."""

    def __init__(self, model: Any, output: str, config_json: str, device: str):
        from .preprocess_encoder import ShardEncoder
        from .preprocessing import PreprocessConfig
        from .registry import load

        tok = load(model, device=device, encoder_only=True) if isinstance(model, str) else model.to(device)
        self.encoder = ShardEncoder(tok, Path(output), PreprocessConfig(**json.loads(config_json)))

    def __call__(self, row: dict) -> dict:
        items = [AudioItem.from_json(d) for d in json.loads(row["items"])]
        rec = self.encoder.encode_shard(int(row["shard"]), items)
        secs = sum(it["audio_samples"] for it in rec["items"]) / self.encoder.tok.sample_rate
        return {"shard": int(row["shard"]), "num_items": rec["num_items"], "seconds": float(secs)}


def run_ray(model: Any, output: Path, pending: Iterable[tuple[int, list[AudioItem]]], config: Any,
            device: str = "cpu", address: Optional[str] = None, num_workers: Optional[int] = None,
            bar: Any = None) -> float:
    """Encode ``pending`` shards on a Ray cluster; returns seconds of audio encoded."""
    from dataclasses import asdict

    ray = _import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            what = f"Ray address {safe_text(address)!r}: cannot join the cluster" if address else \
                "Ray: cannot start a local cluster"
            raise RuntimeError(f"{what} ({type(e).__name__}: {safe_text(e)})") from e
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    rows = [{"shard": n, "items": json.dumps([it.to_json() for it in shard])} for n, shard in pending]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    if num_workers is None:
        num_workers = max(1, min(len(rows), int(ray.cluster_resources().get("CPU", 1))))
    gpu = 1 if str(device).startswith("cuda") else 0
    out = ds.map(_ShardWorker, fn_constructor_kwargs={
        "model": model, "output": str(Path(output).resolve()), "config_json": json.dumps(asdict(config)),
        "device": device}, compute=ray.data.ActorPoolStrategy(size=num_workers), num_gpus=gpu, num_cpus=1)
    secs = 0.0
    for r in out.iter_rows():
        secs += r["seconds"]
        if bar is not None:
            bar.update(r["seconds"])
    return secs
