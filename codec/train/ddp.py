"""Single-GPU / CPU and ``torchrun`` multi-GPU (DDP) plumbing.

Launch on N GPUs with::

    torchrun --nproc_per_node N -m speechtok.cli.main train codec CONFIG --out RUN

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; `init_distributed` joins the process group
(NCCL on CUDA, Gloo on CPU). Each rank reads disjoint items (`BatchSampler`), gradients are
averaged by DDP, only rank 0 logs and writes checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistContext:
    """``rank`` of ``world_size`` processes; ``device`` this process trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if launched by it; otherwise a one-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=pick_device(device))
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``module`` when distributed, else ``module``."""
    if not ctx.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # find_unused_parameters: quantizer dropout / no-quantization steps leave codebooks unused
    return DDP(module, device_ids=ids, find_unused_parameters=True)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def mean_across(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average scalar metrics over ranks (for logging)."""
    if not ctx.distributed or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    t /= ctx.world_size
    return dict(zip(keys, t.tolist()))


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
