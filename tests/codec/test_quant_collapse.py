"""Collapse countermeasures: k-means init, dead-code replacement, the relative threshold, metrics."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechtok.codec.quantization import (
    DeadCodePolicy,
    KMeansInit,
    VectorQuantizer,
    codebook_metrics,
    kmeans,
    nearest,
)


def _blobs(n_clusters, dim, n, spread=0.05, scale=4.0, seed=0):
    """``[n, dim]`` points around ``n_clusters`` well separated centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * scale + 3.0
    labels = torch.randint(0, n_clusters, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, dim, generator=g), centres


def _as_latent(points, B):
    """``[N, D]`` -> ``[B, D, N // B]``."""
    return points.reshape(B, -1, points.shape[1]).transpose(1, 2).contiguous()


@pytest.mark.parametrize("lookup", ["euclidean", "factorized"])
def test_kmeans_init_lowers_first_step_error(lookup):
    points, _ = _blobs(16, 8, 2048)
    x = _as_latent(points, 4)
    errors = {}
    for enabled in (False, True):
        torch.manual_seed(0)
        vq = VectorQuantizer(dim=8, codebook_size=16, lookup=lookup, codebook_dim=8, kmeans_init=KMeansInit(enabled=enabled, iters=10))
        if lookup == "factorized":  # identity projections so both runs see the same vectors
            for proj in (vq.in_proj, vq.out_proj):
                proj.weight.data.copy_(torch.eye(8)[:, :, None])
                proj.bias.data.zero_()
        errors[enabled] = vq(x).metrics["q0/mse"].item()
    assert errors[True] < 0.2 * errors[False], errors


def test_kmeans_init_pools_several_batches():
    """Each batch holds other clusters: only a codebook fit on all three batches fits them all."""
    groups = [_blobs(8, 4, 64, seed=seed)[0] for seed in (1, 2, 3)]
    errors = {}
    for batches in (1, 3):
        torch.manual_seed(0)
        vq = VectorQuantizer(dim=4, codebook_size=24, kmeans_init=KMeansInit(iters=10, batches=batches), dead_code=DeadCodePolicy(enabled=False))
        for i, points in enumerate(groups[:batches]):
            assert not vq.codebook.is_initialized()
            vq(_as_latent(points, 2))
        assert vq.codebook.is_initialized() and vq.codebook.initialized.item() == 1.0
        errors[batches] = vq.eval()(_as_latent(torch.cat(groups), 3)).metrics["q0/mse"].item()
    assert errors[3] < 0.2 * errors[1], errors


def test_kmeans_improves_on_its_start_and_handles_few_points():
    points = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))

    def error(iters):
        torch.manual_seed(0)  # same starting centroids
        result = kmeans(points, 16, iters=iters)
        assert result.counts.sum() == 2000
        return ((points - result.centroids[nearest(points, result.centroids)]) ** 2).mean()

    start, one, ten = error(0), error(1), error(10)
    assert ten < one < start and ten < 0.8 * start
    few = kmeans(points[:5], 16, iters=3)  # fewer points than codes: sampled with replacement
    assert few.centroids.shape == (16, 4) and torch.isfinite(few.centroids).all()
    sph = kmeans(points, 8, iters=5, spherical=True)
    torch.testing.assert_close(sph.centroids.norm(dim=1), torch.ones(8))


def test_nearest_ties_go_to_lowest_index_and_cosine_ignores_norm():
    book = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert nearest(torch.tensor([[0.9, 0.1]]), book).tolist() == [0]
    book = torch.tensor([[10.0, 10.0], [1.0, 0.0]])
    x = torch.tensor([[1.0, 0.9]])
    assert nearest(x, book).tolist() == [1]  # euclidean: the short code is closer
    unit = torch.nn.functional.normalize(book, dim=1)
    assert nearest(torch.nn.functional.normalize(x, dim=1), unit, cosine=True).tolist() == [0]  # same direction


def _force_dead(vq, code, far):
    """Move ``code`` to ``far`` with (almost) no usage."""
    with torch.no_grad():
        vq.codebook.code_usage[code] = 1e-5
        if hasattr(vq.codebook, "embed_sum"):
            vq.codebook.cluster_usage[code] = 1e-5
            vq.codebook.embed_sum[code] = far * 1e-5
        else:
            vq.codebook.weight[code] = far


@pytest.mark.parametrize("lookup", ["euclidean", "factorized"])
@pytest.mark.parametrize("replace", [True, False])
def test_dead_code_is_revived_within_check_interval(lookup, replace):
    torch.manual_seed(0)
    check_every = 4
    points, _ = _blobs(8, 6, 4096, spread=0.3)
    vq = VectorQuantizer(dim=6, codebook_size=8, lookup=lookup, codebook_dim=6, kmeans_init=KMeansInit(iters=5),
                         dead_code=DeadCodePolicy(enabled=replace, threshold=0.1, check_every=check_every))
    vq(_as_latent(points[:512], 4))  # k-means init + step 1
    far = -100.0 * torch.ones(6)  # opposite to every point: never the nearest code
    _force_dead(vq, 3, far)
    dead_seen = []
    for step in range(check_every):
        out = vq(_as_latent(points[512 * (step + 1) : 512 * (step + 2)], 4))
        dead_seen.append(out.metrics["q0/dead"].item())
    assert dead_seen[0] >= 1  # the forced code is counted as dead
    used = vq.eval()(_as_latent(points[-512:], 4)).codes
    table = vq.codebook.table().detach()
    if replace:
        assert (used == 3).any(), "the revived code must be used again"
        assert not torch.allclose(table[3], far)
        # It was replaced by an input vector: within the data's range, far from the forced point.
        assert (table[3] - points.mean(0)).norm() < (far - points.mean(0)).norm() / 4
        assert vq.codebook.code_usage[3] > 0.1 * vq.codebook.code_usage.mean()
    else:  # the control: without the policy the code stays dead (an EMA code drifts slowly to 0)
        assert not (used == 3).any()
        assert (table[3] - far).norm() < 0.1 * far.norm()


def test_dead_codes_are_replaced_only_at_checks():
    torch.manual_seed(1)
    points, _ = _blobs(4, 3, 2048, spread=0.3)
    vq = VectorQuantizer(dim=3, codebook_size=4, kmeans_init=KMeansInit(iters=5), dead_code=DeadCodePolicy(check_every=5))
    vq(_as_latent(points[:256], 2))  # step 1
    _force_dead(vq, 0, -100.0 * torch.ones(3))
    for step in range(2, 5):  # steps 2..4: no check yet
        vq(_as_latent(points[256 * step : 256 * (step + 1)], 2))
        assert vq.codebook.table()[0].norm() > 90
    vq(_as_latent(points[-256:], 2))  # step 5: checked
    assert vq.codebook.table()[0].norm() < 50


def test_dead_code_replacement_never_samples_padding():
    torch.manual_seed(2)
    vq = VectorQuantizer(dim=2, codebook_size=64, kmeans_init=KMeansInit(enabled=False), dead_code=DeadCodePolicy(threshold=0.5, check_every=1))
    x = torch.full((2, 2, 10), 7.0)
    x[1] = 1e4  # the padded item's content is huge: it must never become a code
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :3] = True
    vq(x, mask)  # the first batch calibrates usage to its share
    with torch.no_grad():
        vq.codebook.embed_sum.copy_(torch.randn(64, 2) * 1e-5)  # codes near 0
        vq.codebook.cluster_usage.fill_(1.0)
        vq.codebook.code_usage.fill_(1e-5)
        vq.codebook.code_usage[0] = 1.0  # all but code 0 dead
    vq(x, mask)
    table = vq.codebook.table()
    assert table.abs().max() < 1e3
    # Every dead code took a valid frame (7, 7); only the code this batch used was not dead.
    assert ((table[1:] - 7.0).abs() < 1e-2).all(dim=1).sum() >= 62
    # Nothing valid to sample from: codes are kept.
    before = vq.codebook.table().clone()
    vq(x, torch.zeros(2, 10, dtype=torch.bool))
    torch.testing.assert_close(vq.codebook.table(), before)  # EMA decays sum and usage alike


def test_dead_threshold_is_relative_to_uniform_share():
    K = 4096
    mse = torch.tensor(0.0)
    counts = torch.ones(K)
    for frames_per_step in (64.0, 64000.0):  # small and large batches, same relative usage
        usage = torch.full((K,), frames_per_step / K)
        usage[:100] = 0.05 * frames_per_step / K  # 100 codes used at 5% of their share
        m = codebook_metrics(counts, counts, usage, threshold=0.1, mse=mse)
        assert m["dead"].item() == 100
        if frames_per_step == 64.0:  # where a fixed count of 2 would call every code dead
            assert (usage < 2).all()


def test_metrics_values():
    K = 16
    uniform = torch.full((K,), 5.0)
    m = codebook_metrics(uniform, uniform, uniform, threshold=0.1, mse=torch.tensor(0.5))
    assert math.isclose(m["perplexity"].item(), K, rel_tol=1e-5)
    assert math.isclose(m["entropy_bits"].item(), 4.0, rel_tol=1e-5)
    assert m["used"].item() == 1.0 and m["dead"].item() == 0 and m["mse"].item() == 0.5
    one = torch.zeros(K)
    one[3] = 10.0
    m = codebook_metrics(one, one, one, threshold=0.1, mse=torch.tensor(0.0))
    assert math.isclose(m["perplexity"].item(), 1.0, rel_tol=1e-6) and m["entropy_bits"].item() == 0.0
    assert m["used"].item() == 1 / K and m["dead"].item() == K - 1
    empty = codebook_metrics(torch.zeros(K), torch.zeros(K), uniform, 0.1, torch.tensor(0.0))
    assert torch.isfinite(empty["perplexity"]) and empty["used"].item() == 0.0


def test_used_metric_covers_the_window_since_last_check():
    torch.manual_seed(3)
    vq = VectorQuantizer(dim=2, codebook_size=8, kmeans_init=KMeansInit(enabled=False),
                         dead_code=DeadCodePolicy(enabled=False, check_every=3))
    with torch.no_grad():
        vq.codebook.embed_sum.copy_(torch.arange(8.0)[:, None].repeat(1, 2))  # codes at (i, i)
    used = []
    for code in (0, 1, 2, 3):  # each step uses one code
        used.append(vq(torch.full((1, 2, 4), float(code))).metrics["q0/used"].item())
    assert used == [1 / 8, 2 / 8, 3 / 8, 1 / 8]  # window reset after step 3


@pytest.mark.slow  # spawns two processes (~20 s on 2 shared cores)
def test_distributed_init_and_updates_stay_identical_across_ranks(tmp_path):
    """Two gloo ranks see different data; k-means (rank 0), EMA and replacements stay in sync."""
    script = Path(__file__).with_name("quant_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert set(rank0) == set(rank1) and rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert rank0["codebook.initialized"].item() == 1.0
