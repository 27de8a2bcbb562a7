"""Helper for test_quant_collapse.py: train one EMA quantizer on two gloo ranks with different data.

Usage: python quant_ddp_worker.py OUT_DIR  (writes OUT_DIR/rank{0,1}.safetensors)
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _run(rank: int, world: int, out_dir: str) -> None:
    from safetensors.torch import save_file

    from speechtok.codec.quantization import DeadCodePolicy, KMeansInit, VectorQuantizer

    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial module on every rank
    vq = VectorQuantizer(dim=4, codebook_size=16, kmeans_init=KMeansInit(iters=3), dead_code=DeadCodePolicy(check_every=2))
    torch.manual_seed(100 + rank)  # different data (and dead-code samples) on every rank
    for step in range(5):
        vq(torch.randn(2, 4, 32) + rank)
        if step == 0:
            with torch.no_grad():  # force a dead code so that a replacement happens
                vq.codebook.code_usage[5] = 0.0
    state = {k: v.contiguous() for k, v in vq.state_dict().items()}
    state["code_usage"] = vq.codebook.code_usage.clone()  # the dead-code statistics (not saved normally)
    save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_run, args=(2, sys.argv[1]), nprocs=2, join=True)
