"""k-means: cluster recovery, torch assignment, out-of-core sampling, safe files, pickle import."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speechtok.units.features.base import FeatureError, FeatureSpec
from speechtok.units.featstore import FeatureStore, FeatureWriter
from speechtok.units.kmeans import KMeansConfig, KMeansModel, assign, kmeans_plus_plus, train_kmeans

SPEC = FeatureSpec(kind="test", layer=-1, frame_rate=50.0, dim=8, sample_rate=16000, checkpoint_hash="abc")


def blobs(n_per: int = 200, k: int = 6, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)).astype(np.float32) * 10
    labels = np.repeat(np.arange(k), n_per)
    x = centres[labels] + rng.normal(size=(len(labels), dim)).astype(np.float32) * 0.3
    perm = rng.permutation(len(x))
    return x[perm], labels[perm], centres


def _purity(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of points whose predicted cluster maps one-to-one to its true cluster."""
    k = true.max() + 1
    table = np.zeros((k, pred.max() + 1), dtype=int)
    np.add.at(table, (true, pred), 1)
    return table.max(axis=1).sum() / len(true) if (table > 0).sum(axis=0).max() == 1 else 0.0


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_recovers_clusters(backend):
    x, y, centres = blobs()
    from threadpoolctl import threadpool_limits

    cfg = KMeansConfig(n_clusters=6, backend=backend, sklearn_n_init=2, sklearn_max_iter=30)
    with threadpool_limits(1):  # OpenMP barriers crawl on a busy shared machine
        km = train_kmeans(x, cfg, spec=SPEC)
    pred = km.predict(torch.from_numpy(x)).numpy()
    assert _purity(pred, y) == 1.0
    d = ((km.centroids.numpy()[:, None] - centres[None]) ** 2).sum(-1)
    assert np.sqrt(d.min(axis=1)).max() < 0.2  # every centroid sits on a true centre
    assert km.info["rows"] == len(x) and km.info["train_inertia"] > 0


def test_assign_matches_brute_force_and_chunks():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1000, 16, generator=g), torch.randn(37, 16, generator=g)
    ref = torch.cdist(x.double(), c.double()).argmin(1)
    lab, dist = assign(x, c, chunk=7)
    assert torch.equal(lab, ref)
    torch.testing.assert_close(dist.double(), ((x.double() - c.double()[ref]) ** 2).sum(1), atol=1e-3, rtol=1e-4)


def test_predict_batched_marks_padding():
    km = KMeansModel(torch.eye(4), None)
    feats = torch.eye(4)[None].repeat(2, 1, 1)
    lab = km.predict(feats, torch.tensor([4, 2]))
    assert lab.tolist() == [[0, 1, 2, 3], [0, 1, -1, -1]]


def test_kmeans_plus_plus_spreads_seeds():
    x, y, _ = blobs(n_per=100, k=5)
    init = kmeans_plus_plus(torch.from_numpy(x), 5, seed=1)
    seeded = assign(init, torch.from_numpy(blobs(n_per=100, k=5)[2]))[0]
    assert len(set(seeded.tolist())) == 5  # one seed per true cluster


def test_store_sampling_reads_bounded_rows(tmp_path):
    x, y, _ = blobs(n_per=300, k=6)
    with FeatureWriter(tmp_path / "fs", SPEC, shard_rows=250) as w:
        for i in range(0, len(x), 90):  # utterances of 90 frames spread over several shards
            w.add(f"utt{i}", x[i: i + 90])
    store = FeatureStore(tmp_path / "fs")
    assert store.num_rows == len(x) and len(store.index["shards"]) > 3
    km = train_kmeans(store, KMeansConfig(n_clusters=6, sample_rows=300))
    assert store.rows_read == 300 < store.num_rows  # only the sampled rows were read
    assert km.spec == SPEC
    pred = km.predict(torch.from_numpy(x)).numpy()
    assert _purity(pred, y) == 1.0
    # rows come back exactly, and in utterance order
    np.testing.assert_array_equal(store.utterance(1), x[90:180])
    sample = FeatureStore(tmp_path / "fs").sample(50, seed=3)
    assert sample.shape == (50, 8) and len({tuple(r) for r in sample}) == 50


def test_store_refuses_incomplete_and_mismatched(tmp_path):
    w = FeatureWriter(tmp_path / "fs", SPEC)
    w.add("a", np.zeros((3, 8), np.float32))
    with pytest.raises(FeatureError, match="no index.json"):
        FeatureStore(tmp_path / "fs")  # not closed: no index yet
    with pytest.raises(FeatureError, match=r"\[T, 8\]"):
        w.add("b", np.zeros((3, 7), np.float32))
    w.close()
    other = FeatureSpec(kind="test", layer=3, frame_rate=50.0, dim=8, sample_rate=16000, checkpoint_hash="abc")
    from speechtok.units.featstore import open_store

    with pytest.raises(FeatureError, match="layer"):
        open_store(tmp_path / "fs", expect=other)


def test_save_load_roundtrip_and_format_check(tmp_path):
    km = KMeansModel(torch.randn(5, 8), SPEC, {"rows": 3})
    p = km.save(tmp_path / "km.safetensors")
    back = KMeansModel.load(p)
    assert torch.equal(back.centroids, km.centroids) and back.spec == SPEC and back.info == {"rows": 3}
    assert back.hash() == km.hash()
    assert KMeansModel(km.centroids, None).hash() != km.hash()  # the spec is part of the identity
    p.write_bytes(b"garbage")
    with pytest.raises(FeatureError, match="km.safetensors"):
        KMeansModel.load(p)


def test_pickle_import_is_opt_in(tmp_path):
    joblib = pytest.importorskip("joblib")
    from sklearn.cluster import KMeans

    from speechtok.units.kmeans import import_kmeans_pickle

    x, _, _ = blobs(n_per=20, k=3)
    sk = KMeans(3, n_init=1, random_state=0).fit(x)
    p = tmp_path / "km.bin"
    joblib.dump(sk, p)
    with pytest.raises(FeatureError, match="trust_pickle"):
        import_kmeans_pickle(p)
    km = import_kmeans_pickle(p, trust_pickle=True, spec=SPEC)
    assert np.allclose(km.centroids.numpy(), sk.cluster_centers_)
    # torch assignment agrees with sklearn's own labels
    assert (km.predict(torch.from_numpy(x)).numpy() == sk.labels_).all()
