"""Pickle-free training checkpoints with exact resume.

A checkpoint is a directory ``<run>/checkpoints/step-00001000/`` holding

- ``modules.safetensors``: every module's state dict, keys ``"<module>/<param name>"``;
- ``optim.safetensors``: every optimizer's per-parameter state tensors
  (``"<optimizer>/<param index>/<key>"``) and the RNG states (``"rng/torch"``, ``"rng/cuda<i>"``);
- ``state.json``: format + version, step, data position, optimizer param groups and scalar state,
  GradScaler state, Python/NumPy RNG states, the training config and free-form ``extra``.

Exact resume also needs the modules' *runtime* state that a model file leaves out (e.g. codebook
usage statistics, dead-code step counters, a k-means pool still being gathered): every submodule
with ``runtime_state()``/``load_runtime_state()`` (the quantizers' codebooks) contributes tensors,
stored in ``optim.safetensors`` as ``"runtime/<module>/<submodule>/<name>"``, and JSON scalars,
stored in ``state.json``.

The directory is written under a temp name and renamed into place; ``<run>/checkpoints/latest``
(a text file) names the newest complete one. Nothing here uses pickle.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from speechtok.formats import read_versioned_json

CKPT_FORMAT = "speechtok.train.checkpoint"
CKPT_VERSION = 2  # 2: runtime state through the modules' runtime_state API
MODULES_FILE = "modules.safetensors"
OPTIM_FILE = "optim.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the run (names the path)."""


@dataclass
class TrainingState:
    """What a checkpoint restores besides the module weights."""

    step: int = 0
    data_position: int = 0  # batches consumed by this process
    extra: dict = field(default_factory=dict)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n["name"], tensors["rng/numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))


def _runtime_state(name: str, module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (``"runtime/<name>/<submodule>/<key>"``) and scalars (by submodule) of every
    submodule that has a ``runtime_state`` method."""
    tensors, scalars = {}, {}
    for sub_name, sub in module.named_modules():
        if callable(getattr(sub, "runtime_state", None)):
            t, scalars[sub_name] = sub.runtime_state()
            tensors.update({f"runtime/{name}/{sub_name}/{k}": v.detach().cpu().contiguous() for k, v in t.items()})
    return tensors, scalars


def _set_runtime_state(name: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor],
                       scalars: dict[str, Any], where: Path, strict: bool) -> None:
    for sub_name, sub in module.named_modules():
        if not callable(getattr(sub, "load_runtime_state", None)):
            continue
        if sub_name not in scalars:
            if strict:
                raise CheckpointError(f"{where}: no runtime state for {name}.{sub_name}")
            continue
        prefix = f"runtime/{name}/{sub_name}/"
        mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            sub.load_runtime_state(mine, scalars[sub_name])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{where}: runtime state of {name}.{sub_name} does not match ({e})") from e


def _split_optimizer(name: str, sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{name}/{pid}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    prefix = f"{name}/"
    for key, v in tensors.items():
        if key.startswith(prefix):
            pid, k = key[len(prefix):].split("/", 1)
            state.setdefault(int(pid), {})[k] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, *, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], state: TrainingState,
                    config: Optional[dict] = None, scaler: Optional[Any] = None, keep: int = 3) -> Path:
    """Write ``run_dir/checkpoints/step-<step>/`` atomically, update ``latest``, keep the newest ``keep``."""
    from safetensors.torch import save_file

    from speechtok.atomic import atomic_write_text

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        mod_t, opt_t, runtime = {}, {}, {}
        for mname, m in modules.items():
            for k, v in m.state_dict().items():
                mod_t[f"{mname}/{k}"] = v.detach().cpu().contiguous()
            rt_t, runtime[mname] = _runtime_state(mname, m)
            opt_t.update(rt_t)
        save_file(mod_t, str(tmp / MODULES_FILE), metadata={"format": CKPT_FORMAT})
        opt_meta = {}
        for oname, opt in optimizers.items():
            t, meta = _split_optimizer(oname, opt.state_dict())
            opt_t.update(t)
            opt_meta[oname] = meta
        rng_t, rng_meta = _rng_state()
        opt_t.update(rng_t)
        save_file(opt_t, str(tmp / OPTIM_FILE), metadata={"format": CKPT_FORMAT})
        meta = {"format": CKPT_FORMAT, "format_version": CKPT_VERSION, "step": state.step,
                "data_position": state.data_position, "extra": state.extra, "optimizers": opt_meta,
                "rng": rng_meta, "scaler": scaler.state_dict() if scaler is not None else None,
                "modules": sorted(modules), "runtime": runtime, "config": config}
        (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name + "\n")
    ckpts = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in ckpts[: max(0, len(ckpts) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: Path) -> Optional[Path]:
    """A checkpoint directory from itself, a run directory or its ``checkpoints/`` folder; None if none."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = root / LATEST
        if latest.is_file():
            cand = root / latest.read_text().strip()
            if (cand / STATE_FILE).is_file():
                return cand
    return None


def load_checkpoint(path: Path, *, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], scaler: Optional[Any] = None,
                    restore_rng: bool = True, strict: bool = True) -> TrainingState:
    """Restore modules, optimizers, scaler and RNG states in place; returns the `TrainingState`."""
    from safetensors.torch import load_file

    ckpt = find_checkpoint(Path(path))
    if ckpt is None:
        raise CheckpointError(f"{path}: no checkpoint ({STATE_FILE} or checkpoints/{LATEST} not found)")
    meta = read_versioned_json(ckpt / STATE_FILE, CKPT_FORMAT, CKPT_VERSION, CheckpointError, "training checkpoint")
    for f in (MODULES_FILE, OPTIM_FILE):
        if not (ckpt / f).is_file():
            raise CheckpointError(f"{ckpt}: missing {f}")
    mod_t = load_file(str(ckpt / MODULES_FILE))
    for mname, m in modules.items():
        prefix = f"{mname}/"
        sd = {k[len(prefix):]: v for k, v in mod_t.items() if k.startswith(prefix)}
        if not sd and strict:
            raise CheckpointError(f"{ckpt / MODULES_FILE}: no weights for module {mname!r} "
                                  f"(has {meta.get('modules')})")
        try:
            m.load_state_dict(sd, strict=strict)
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt / MODULES_FILE}: module {mname!r} does not match: {e}") from e
    opt_t = load_file(str(ckpt / OPTIM_FILE))
    for mname, m in modules.items():
        _set_runtime_state(mname, m, opt_t, (meta.get("runtime") or {}).get(mname, {}), ckpt, strict)
    for oname, opt in optimizers.items():
        if oname not in meta["optimizers"]:
            raise CheckpointError(f"{ckpt / STATE_FILE}: no state for optimizer {oname!r}")
        opt.load_state_dict(_join_optimizer(oname, opt_t, meta["optimizers"][oname]))
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    if restore_rng:
        _set_rng_state(opt_t, meta["rng"])
    return TrainingState(step=int(meta["step"]), data_position=int(meta["data_position"]),
                         extra=dict(meta.get("extra") or {}))
