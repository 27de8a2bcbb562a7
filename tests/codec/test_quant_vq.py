"""VectorQuantizer: straight-through gradients, losses, masking, batch independence, state round trip."""
import copy

import pytest
import torch

from speechtok.codec.quantization import DeadCodePolicy, KMeansInit, VectorQuantizer

NO_KMEANS = KMeansInit(enabled=False)


def _mask(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def _trained(vq, steps=3, B=4, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    vq.train()
    for _ in range(steps):
        vq(torch.randn(B, vq.dim, T, generator=g))
    return vq


@pytest.mark.parametrize("lookup", ["euclidean", "factorized"])
def test_straight_through_gradient_reaches_input_unchanged(lookup):
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=6, codebook_size=16, lookup=lookup, codebook_dim=6, kmeans_init=NO_KMEANS)
    if lookup == "factorized":  # identity projections: the STE alone must pass the gradient
        for proj in (vq.in_proj, vq.out_proj):
            proj.weight.data.copy_(torch.eye(6)[:, :, None])
            proj.bias.data.zero_()
    x = torch.randn(2, 6, 10, requires_grad=True)
    mask = _mask([10, 7], 10)
    table = vq.codebook.table().detach().clone()  # before the EMA update of this step
    out = vq(x, mask)
    g = torch.randn_like(x)
    (out.x * g).sum().backward()
    expected = g * mask[:, None, :]  # identity at valid frames, nothing through padding
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-6)
    # The forward value is the code vector, not the input.
    codes = out.codes[:, 0]
    torch.testing.assert_close(out.x[0].t(), table[codes[0]], rtol=1e-5, atol=1e-5)


def test_euclidean_commitment_loss_gradient_is_documented_formula():
    torch.manual_seed(1)
    w = 0.7
    vq = VectorQuantizer(dim=5, codebook_size=8, commitment_weight=w, kmeans_init=NO_KMEANS)
    x = torch.randn(3, 5, 6, requires_grad=True)
    mask = _mask([6, 4, 1], 6)
    table = vq.codebook.table().detach().clone()  # the codes this step looks up
    out = vq(x, mask)
    out.penalty.backward()
    q = table[out.codes[:, 0].clamp(min=0)].permute(0, 2, 1) * mask[:, None]  # code vectors (0 at padding)
    n_valid = int(mask.sum())
    # penalty = w * mean over valid frames and dims of |x - sg(q)|^2
    expected_penalty = w * ((x.detach() - q) ** 2 * mask[:, None]).sum() / (n_valid * 5)
    torch.testing.assert_close(out.penalty.detach(), expected_penalty)
    expected_grad = w * 2 * (x.detach() - q) * mask[:, None] / (n_valid * 5)
    torch.testing.assert_close(x.grad, expected_grad)
    # The EMA codebook has no parameter: nothing for a loss to train.
    assert list(vq.codebook.parameters()) == []


def test_factorized_codebook_loss_trains_codes_towards_inputs():
    torch.manual_seed(2)
    vq = VectorQuantizer(dim=12, codebook_size=16, lookup="factorized", codebook_dim=4,
                         commitment_weight=0.25, codebook_weight=1.0, kmeans_init=NO_KMEANS)
    x = torch.randn(2, 12, 20)
    mask = _mask([20, 9], 20)
    out = vq(x, mask)
    out.penalty.backward()
    z = vq.in_proj(x).detach().transpose(1, 2)[mask]  # valid frames [N, 4]
    codes = out.codes[:, 0][mask]
    weight = vq.codebook.weight.detach()
    n = z.shape[0] * 4
    # codebook term: d/dc of 1.0 * mean |sg(z) - c|^2 summed over the frames using c
    expected = torch.zeros_like(weight).index_add_(0, codes, 2 * (weight[codes] - z) / n)
    torch.testing.assert_close(vq.codebook.weight.grad, expected, rtol=1e-5, atol=1e-6)
    # A gradient step on the penalty alone brings the codes closer to their inputs: half-way
    # to the mean of the frames using them with this step size.
    before = ((weight[codes] - z) ** 2).sum()
    counts = torch.bincount(codes, minlength=16).clamp(min=1).float()
    with torch.no_grad():
        vq.codebook.weight -= 0.25 * n * vq.codebook.weight.grad / counts[:, None]
    after = ((vq.codebook.weight.detach()[codes] - z) ** 2).sum()
    assert after < 0.9 * before
    # The commitment term reaches the projection (the encoder side).
    assert vq.in_proj.weight.grad is not None and vq.in_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("lookup", ["euclidean", "factorized"])
def test_padding_content_changes_nothing(lookup):
    torch.manual_seed(3)
    kmeans = KMeansInit(iters=3)
    dead = DeadCodePolicy(check_every=2)
    a = VectorQuantizer(dim=4, codebook_size=8, lookup=lookup, kmeans_init=kmeans, dead_code=dead)
    b = copy.deepcopy(a)
    mask = _mask([12, 5, 9], 12)
    for step in range(5):
        x = torch.randn(3, 4, 12)
        x_other = x.clone()
        garbage = torch.randn(3, 4, 12) * 1e6
        garbage[0, 0, -1] = float("nan")
        x_other = torch.where(mask[:, None, :], x, garbage)
        xa, xb = x.clone().requires_grad_(), x_other.clone().requires_grad_()
        torch.manual_seed(step)  # dead-code sampling draws random numbers
        out_a = a(xa, mask)
        torch.manual_seed(step)
        out_b = b(xb, mask)
        assert torch.equal(out_a.codes, out_b.codes)
        assert (out_a.codes[~mask[:, None, :]] == -1).all()
        assert torch.equal(out_a.x, out_b.x)
        assert torch.equal(out_a.penalty, out_b.penalty)
        for key in out_a.metrics:
            assert torch.equal(out_a.metrics[key], out_b.metrics[key]), key
        (out_a.x.sum() + out_a.penalty).backward()
        (out_b.x.sum() + out_b.penalty).backward()
        assert torch.equal(xa.grad, xb.grad)
        assert (xb.grad[~mask[:, None, :].expand_as(xb)] == 0).all()
    for (name, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), name


def test_padding_frames_never_count_in_statistics():
    """A padded batch updates the EMA exactly as its valid frames alone would."""
    torch.manual_seed(4)
    vq = VectorQuantizer(dim=4, codebook_size=8, kmeans_init=NO_KMEANS, dead_code=DeadCodePolicy(enabled=False))
    ref = copy.deepcopy(vq)
    x = torch.randn(2, 4, 10)
    mask = _mask([10, 3], 10)
    out = vq(x, mask)
    valid_only = torch.cat([x[0], x[1, :, :3]], dim=1)[None]  # [1, 4, 13]
    out_ref = ref(valid_only)
    for name in ("embed_sum", "cluster_usage"):
        torch.testing.assert_close(getattr(vq.codebook, name), getattr(ref.codebook, name), rtol=0, atol=1e-6)
    for key in ("q0/perplexity", "q0/used", "q0/mse"):
        torch.testing.assert_close(out.metrics[key], out_ref.metrics[key])


@pytest.mark.parametrize("lookup", ["euclidean", "factorized"])
def test_batched_with_padding_equals_per_item(lookup):
    torch.manual_seed(5)
    vq = _trained(VectorQuantizer(dim=6, codebook_size=32, lookup=lookup, kmeans_init=KMeansInit(iters=2))).eval()
    lengths = [17, 4, 11, 1]
    xs = [torch.randn(1, 6, n) for n in lengths]
    batch = torch.zeros(4, 6, 17)
    for i, item in enumerate(xs):
        batch[i, :, : item.shape[2]] = item[0]
    mask = _mask(lengths, 17)
    with torch.no_grad():
        out = vq(batch, mask)
        codes = vq.encode(batch, mask)
    assert torch.equal(out.codes, codes)
    for i, item in enumerate(xs):
        n = lengths[i]
        with torch.no_grad():
            single = vq(item)
        assert torch.equal(out.codes[i : i + 1, :, :n], single.codes)
        if vq.out_proj is None:  # pure lookup: bit-exact
            assert torch.equal(out.x[i : i + 1, :, :n], single.x)
            assert torch.equal(vq.decode(codes)[i : i + 1, :, :n], single.x)
        else:  # a 1x1 convolution may round differently for another batch size
            torch.testing.assert_close(out.x[i : i + 1, :, :n], single.x, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(vq.decode(codes)[i : i + 1, :, :n], single.x, rtol=1e-5, atol=1e-6)
        assert (codes[i, :, n:] == -1).all() and (out.x[i, :, n:] == 0).all()


def test_eval_changes_no_state_and_is_deterministic():
    torch.manual_seed(6)
    vq = _trained(VectorQuantizer(dim=4, codebook_size=16, kmeans_init=KMeansInit(iters=2))).eval()
    state = copy.deepcopy(vq.state_dict())
    x = torch.randn(3, 4, 9)
    first, second = vq(x), vq(x)
    assert torch.equal(first.codes, second.codes) and torch.equal(first.x, second.x)
    assert first.penalty.item() == 0.0
    for name, t in vq.state_dict().items():
        assert torch.equal(t, state[name]), name


@pytest.mark.parametrize("lookup", ["euclidean", "factorized"])
def test_state_dict_round_trip_through_safetensors(tmp_path, lookup):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(7)
    vq = _trained(VectorQuantizer(dim=6, codebook_size=16, lookup=lookup, kmeans_init=KMeansInit(iters=2)))
    path = tmp_path / "vq.safetensors"
    save_file({k: v.contiguous() for k, v in vq.state_dict().items()}, str(path))
    fresh = VectorQuantizer(dim=6, codebook_size=16, lookup=lookup, kmeans_init=KMeansInit(iters=2))
    assert not fresh.codebook.is_initialized()
    fresh.load_state_dict(load_file(str(path)))
    assert fresh.codebook.is_initialized()  # k-means will not overwrite loaded codes
    vq.eval(), fresh.eval()
    x = torch.randn(2, 6, 12)
    assert torch.equal(vq.encode(x), fresh.encode(x))
    assert torch.equal(vq(x).x, fresh(x).x)
    fresh.train()
    table = fresh.codebook.table().detach().clone()
    fresh(x)  # a training step must not re-run k-means on loaded codes
    assert (fresh.codebook.table().detach() - table).abs().max() < 1.0
    assert "window_usage" not in "".join(vq.state_dict())  # window statistics are not saved


def test_shape_errors_name_the_shape():
    vq = VectorQuantizer(dim=4, codebook_size=8)
    with pytest.raises(ValueError, match=r"\[B, 4, T\].*\(2, 5, 3\)"):
        vq(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="mask"):
        vq(torch.zeros(2, 4, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="lookup"):
        VectorQuantizer(dim=4, codebook_size=8, lookup="cosine")
