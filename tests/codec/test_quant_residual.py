"""ResidualVQ / SplitResidualVQ: residual error, any-k encode/decode, dropout, semantic outputs, Mimi parity."""
import copy
import json

import pytest
import torch

from speechtok.codec.quantization import (
    DeadCodePolicy,
    KMeansInit,
    QuantizerConfig,
    ResidualVQ,
    SplitResidualVQ,
    build_quantizer,
)

FAST = dict(kmeans_init=KMeansInit(iters=4), dead_code=DeadCodePolicy(check_every=5))


def _mask(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def _train(q, steps=4, B=4, T=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q.train()
    for _ in range(steps):
        q(torch.randn(B, q.input_dim, T, generator=g))
    return q.eval()


def test_rvq_error_falls_with_every_codebook():
    torch.manual_seed(0)
    rvq = _train(ResidualVQ(8, 8, n_q=6, codebook_size=32, **FAST), steps=6)
    x = torch.randn(8, 8, 50, generator=torch.Generator().manual_seed(99))  # held-out data
    errors = [((rvq.decode(rvq.encode(x, n_q=k)) - x) ** 2).mean().item() for k in range(1, 7)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]
    # forward's metric agrees with decode(encode) at every k
    for k in (1, 6):
        assert abs(rvq(x, n_q=k).metrics["mse"].item() - errors[k - 1]) < 1e-5


@pytest.mark.parametrize("kind", ["rvq", "split"])
def test_any_k_encode_decode_matches_forward(kind):
    torch.manual_seed(1)
    cfg = QuantizerConfig(kind=kind, input_dim=12, dim=6, n_q=4, codebook_size=16, n_semantic=1 if kind == "split" else 0,
                          kmeans_init=KMeansInit(iters=3))
    q = _train(build_quantizer(cfg))
    x = torch.randn(3, 12, 20)
    mask = _mask([20, 13, 2], 20)
    full = q.encode(x, mask)
    assert full.shape == (3, 4, 20) and (full[~mask[:, None, :].expand_as(full)] == -1).all()
    for k in range(1, 5):
        codes = q.encode(x, mask, n_q=k)
        assert torch.equal(codes, full[:, :k])  # the first k codebooks do not depend on k
        out = q(x, mask, n_q=k)
        assert torch.equal(out.codes, codes)
        torch.testing.assert_close(q.decode(codes), out.x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(q.decode(full[:, :k]), out.x, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="n_q"):
        q.encode(x, n_q=5)
    with pytest.raises(ValueError, match=r"codes \[B, k<=4, T\]"):
        q.decode(torch.zeros(3, 5, 20, dtype=torch.long))


def test_rvq_batched_with_padding_equals_per_item():
    torch.manual_seed(2)
    rvq = _train(ResidualVQ(6, 6, n_q=3, codebook_size=16, **FAST))
    lengths = [9, 3, 6]
    items = [torch.randn(1, 6, n) for n in lengths]
    batch = torch.zeros(3, 6, 9)
    for i, item in enumerate(items):
        batch[i, :, : lengths[i]] = item[0]
    out = rvq(batch, _mask(lengths, 9))
    for i, item in enumerate(items):
        single = rvq(item)
        assert torch.equal(out.codes[i : i + 1, :, : lengths[i]], single.codes)
        assert torch.equal(out.x[i : i + 1, :, : lengths[i]], single.x)


def test_straight_through_gradient_through_rvq():
    torch.manual_seed(3)
    rvq = ResidualVQ(5, 5, n_q=3, codebook_size=8, **FAST)
    x = torch.randn(2, 5, 7, requires_grad=True)
    out = rvq(x)
    g = torch.randn_like(x)
    (out.x * g).sum().backward()
    torch.testing.assert_close(x.grad, g)  # the sum of straight-through levels is the identity
    x.grad = None
    rvq(x).penalty.backward()  # every level's commitment loss reaches the input
    assert x.grad.abs().sum() > 0


def test_quantizer_dropout_per_item():
    torch.manual_seed(4)
    rvq = ResidualVQ(4, 4, n_q=4, codebook_size=8, dropout=1.0, min_q=2, **FAST)
    _train(rvq, steps=1).train()
    seen = set()
    for _ in range(10):
        before = copy.deepcopy(rvq).eval()  # the codes this step looks up (EMA updates afterwards)
        x = torch.randn(6, 4, 5)
        out = rvq(x)
        assert out.n_q is not None and out.n_q.shape == (6,)
        for b, n in enumerate(out.n_q.tolist()):
            assert 2 <= n <= 4
            seen.add(n)
            assert (out.codes[b, :n] >= 0).all() and (out.codes[b, n:] == -1).all()
        # Output = decode of the kept codebooks only (dropped ones decode to 0).
        torch.testing.assert_close(out.x, before.decode(out.codes), rtol=1e-5, atol=1e-5)
    assert seen == {2, 3, 4}
    rvq.eval()
    assert rvq(torch.randn(2, 4, 5)).n_q is None  # no dropout at inference


def test_dropped_codebooks_get_no_statistics():
    torch.manual_seed(5)
    rvq = ResidualVQ(4, 4, n_q=2, codebook_size=8, dropout=1.0, min_q=1, decay=0.5, **FAST)
    _train(rvq, steps=1).train()
    usage = rvq.layers[1].codebook.cluster_usage.clone()
    window = rvq.layers[1].codebook.window_usage.clone()
    x = torch.randn(3, 4, 6)
    torch.manual_seed(0)
    while True:  # find a draw where every item keeps one codebook only
        state = torch.random.get_rng_state()
        n = rvq._sample_n_q(3, 2, torch.device("cpu"))
        if (n == 1).all():
            break
    torch.random.set_rng_state(state)
    out = rvq(x)
    assert (out.n_q == 1).all()
    torch.testing.assert_close(rvq.layers[1].codebook.cluster_usage, 0.5 * usage)  # decayed, no counts
    assert torch.equal(rvq.layers[1].codebook.window_usage, window)
    assert out.metrics["q1/entropy_bits"].item() == 0.0


def test_speechtokenizer_topology_semantic_is_first_level():
    torch.manual_seed(6)
    rvq = _train(ResidualVQ(10, 6, n_q=3, codebook_size=16, n_semantic=1, **FAST))
    x = torch.randn(2, 10, 8)
    out = rvq(x)
    torch.testing.assert_close(out.semantic, rvq.decode(out.codes[:, :1]), rtol=1e-5, atol=1e-6)
    assert ResidualVQ(10, 6, n_q=3, codebook_size=16).eval()(x).semantic is None


def test_split_rvq_semantic_and_acoustic_paths():
    torch.manual_seed(7)
    split = _train(SplitResidualVQ(12, 6, n_q=4, n_semantic=1, codebook_size=16, **FAST))
    assert split.n_semantic == 1 and split.codebook_sizes == (16,) * 4
    x = torch.randn(2, 12, 9)
    out = split(x)
    sem = split.semantic_rvq.decode(out.codes[:, :1])
    ac = split.acoustic_rvq.decode(out.codes[:, 1:])
    torch.testing.assert_close(out.semantic, sem, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.x, sem + ac, rtol=1e-5, atol=1e-6)
    # The acoustic RVQ quantizes the same latent, not what the semantic one left.
    torch.testing.assert_close(split.acoustic_rvq.encode(x), out.codes[:, 1:], rtol=0, atol=0)
    assert torch.equal(split.encode(x, n_q=1), out.codes[:, :1])
    torch.testing.assert_close(split(x, n_q=1).x, sem, rtol=1e-5, atol=1e-6)


def test_split_dropout_keeps_semantic_codebooks():
    torch.manual_seed(8)
    split = SplitResidualVQ(6, 4, n_q=3, n_semantic=1, codebook_size=8, dropout=1.0, **FAST)
    counts = set()
    for _ in range(12):
        out = split(torch.randn(4, 6, 3))
        assert (out.codes[:, 0] >= 0).all()
        counts.update(out.n_q.tolist())
    assert counts == {1, 2, 3}


def test_mimi_parity_with_transformers():
    """Weights of transformers' Mimi quantizer load by renaming only and give the same codes."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.mimi.modeling_mimi import MimiSplitResidualVectorQuantizer

    cfg = transformers.MimiConfig(hidden_size=32, vector_quantization_hidden_dimension=16, codebook_dim=16,
                                  codebook_size=64, num_quantizers=4, num_semantic_quantizers=1)
    torch.manual_seed(9)
    ref = MimiSplitResidualVectorQuantizer(cfg).eval()
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if name.endswith(("embed_sum", "proj.weight")):
                t.copy_(torch.randn_like(t))
            elif name.endswith("cluster_usage"):
                t.copy_(torch.rand_like(t) + 0.5)
    ours = build_quantizer(QuantizerConfig.mimi(n_q=4, input_dim=32, dim=16, codebook_size=64)).eval()
    rename = {"semantic_residual_vector_quantizer.": "semantic_rvq.", "acoustic_residual_vector_quantizer.": "acoustic_rvq."}
    state = {}
    for name, t in ref.state_dict().items():
        for old, new in rename.items():
            name = name.replace(old, new)
        state[name] = t
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 32, 40)
    with torch.no_grad():
        want = ref.encode(x).transpose(0, 1)  # transformers returns [K, B, T]
        got = ours.encode(x)
        assert torch.equal(got, want)
        for k in (1, 4):
            torch.testing.assert_close(ours.decode(got[:, :k]), ref.decode(want[:, :k]), rtol=1e-5, atol=1e-5)


def test_config_round_trip_and_build():
    cfg = QuantizerConfig(kind="split", input_dim=8, dim=4, n_q=3, n_semantic=1, codebook_size=32, lookup="factorized",
                          kmeans_init=KMeansInit(iters=2, batches=2), dead_code=DeadCodePolicy(threshold=0.05))
    again = QuantizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    q = build_quantizer(again)
    assert isinstance(q, SplitResidualVQ) and q.semantic_rvq.layers[0].codebook.kmeans_init.batches == 2
    assert isinstance(build_quantizer(QuantizerConfig(kind="vq", input_dim=4, codebook_size=8)).codebook.codebook_size, int)
    with pytest.raises(ValueError, match="unknown keys.*'bogus'"):
        QuantizerConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="n_semantic"):
        QuantizerConfig(kind="split", n_semantic=0)


def test_split_state_dict_uses_mimi_names_and_round_trips(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(10)
    cfg = QuantizerConfig.mimi(n_q=3, input_dim=16, dim=8, codebook_size=16, kmeans_init=KMeansInit(iters=2))
    q = _train(build_quantizer(cfg))
    keys = set(q.state_dict())
    assert {"semantic_rvq.input_proj.weight", "acoustic_rvq.output_proj.weight",
            "acoustic_rvq.layers.1.codebook.embed_sum", "semantic_rvq.layers.0.codebook.cluster_usage",
            "semantic_rvq.layers.0.codebook.initialized"} <= keys
    save_file({k: v.contiguous() for k, v in q.state_dict().items()}, str(tmp_path / "q.safetensors"))
    fresh = build_quantizer(cfg)
    fresh.load_state_dict(load_file(str(tmp_path / "q.safetensors")))
    fresh.eval()
    x = torch.randn(2, 16, 11)
    assert torch.equal(fresh.encode(x), q.encode(x))
    assert torch.equal(fresh(x).x, q(x).x)


@pytest.mark.parametrize("lookup", ["euclidean", "factorized"])
def test_training_steps_never_sync_with_the_host(lookup):
    """After initialisation, no op whose output size or value must reach the host runs.

    On CPU a dispatch mode records every aten op of the forward and backward passes; ops that
    force a device sync on GPU (``.item()``, ``bool(tensor)``, boolean indexing, ``nonzero``)
    must not appear, dead-code checks included.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    syncing = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "bincount", "boolean_index"}

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())
            ):
                name = "boolean_index"  # output size depends on values: a sync on GPU
            self.ops.add(name)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(11)
    rvq = ResidualVQ(6, 6, n_q=3, codebook_size=16, lookup=lookup, dropout=0.5,
                     kmeans_init=KMeansInit(iters=2), dead_code=DeadCodePolicy(check_every=2))
    mask = _mask([12, 7], 12)
    rvq(torch.randn(2, 6, 12), mask)  # initialisation (k-means) may sync, once
    recorder = Recorder()
    with recorder:
        for _ in range(4):  # includes two dead-code checks
            x = torch.randn(2, 6, 12, requires_grad=True)
            out = rvq(x, mask)
            (out.x.pow(2).mean() + out.penalty).backward()
    assert "searchsorted" in recorder.ops  # the dead-code sampling ran
    assert not (recorder.ops & syncing), sorted(recorder.ops & syncing)


@pytest.mark.parametrize("kind", ["vq", "rvq", "split"])
@pytest.mark.parametrize("lookup", ["euclidean", "factorized"])
def test_zero_length_and_one_frame_inputs(kind, lookup):
    torch.manual_seed(12)
    cfg = QuantizerConfig(kind=kind, input_dim=6, dim=4, n_q=2, codebook_size=8, n_semantic=1 if kind == "split" else 0,
                          lookup=lookup, kmeans_init=KMeansInit(iters=2), dead_code=DeadCodePolicy(check_every=1))
    q = build_quantizer(cfg)
    K = 1 if kind == "vq" else 2
    empty = q(torch.randn(2, 6, 0))  # training, nothing valid: no initialisation, no NaN
    assert empty.codes.shape == (2, K, 0) and empty.x.shape == (2, 6, 0) and torch.isfinite(empty.penalty)
    assert all(torch.isfinite(v) for v in empty.metrics.values())
    codebooks = [m for m in q.modules() if hasattr(m, "is_initialized")]
    assert not any(cb.is_initialized() for cb in codebooks)
    one = q(torch.randn(2, 6, 1))  # one frame per item initialises and trains
    assert one.codes.shape == (2, K, 1) and (one.codes >= 0).all()
    assert all(cb.is_initialized() for cb in codebooks)
    q.eval()
    assert q.encode(torch.randn(1, 6, 0)).shape == (1, K, 0)
    assert q.decode(q.encode(torch.randn(1, 6, 1))).shape == (1, 6, 1)


def test_row_encode_path_equals_per_codebook_path():
    """The projection-free Euclidean fast path (`_encode_rows`, used for Mimi) gives exactly the codes of
    the general per-codebook path, padding included."""
    torch.manual_seed(0)
    rvq = _train(ResidualVQ(8, 8, n_q=5, codebook_size=32, **FAST))
    x = torch.randn(3, 8, 20)
    mask = _mask([20, 7, 1], 20)
    layers = rvq.layers[:4]
    fast = ResidualVQ._encode_rows(rvq._in(x), mask, layers)
    general = ResidualVQ._encode_layers(rvq._in(x), mask, layers)
    assert torch.equal(fast, general) and fast.unique().numel() > 8 and (fast[1, :, 7:] == -1).all()
    assert torch.equal(rvq.encode(x, mask, n_q=4), fast)
