"""k-means for speech units: faiss (CPU, GPU when present) or fairseq's sklearn recipe.

Training draws at most ``sample_rows`` rows from a `FeatureStore` on disk (never the whole
store), or takes an in-memory ``[N, D]`` array. Assignment is always torch: chunked
``argmin_k ||x||^2 - 2 x C^T + ||C||^2`` (never ``sklearn.predict``), on any device.

A trained `KMeansModel` is saved as one safetensors file: tensor ``centroids [K, D]`` float32 and
metadata ``{"format": "speechtok.kmeans", "format_version", "spec": FeatureSpec JSON, "info"}``.
fairseq / textlesslib k-means pickles (joblib) import only with ``trust_pickle=True``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from speechtok.formats import MAX_CODEBOOK_SIZE, check_format, safe_text

from .features.base import MAX_FEATURE_DIM, FeatureError, FeatureSpec
from .featstore import FeatureStore

FORMAT = "speechtok.kmeans"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class KMeansConfig:
    """k-means training settings.

    Attributes:
        n_clusters: K.
        backend: "faiss" (Lloyd iterations, default) or "sklearn" (MiniBatchKMeans with
            fairseq ``simple_kmeans`` parameters below, for parity with published units).
        sample_rows: rows drawn from a store for training (None: all rows of an in-memory array;
            a store always samples, default ``min(num_rows, 256 * K)`` as faiss would).
        niter / seed / nredo: faiss Lloyd iterations, RNG seed, restarts (best kept).
        init: faiss start: "k-means++" (greedy k-means++ in torch on ``init_rows`` sampled rows,
            as sklearn's) or "random" (faiss' own random rows).
        gpu: faiss on GPU (None: when faiss sees one).
        sklearn_*: fairseq's MiniBatchKMeans recipe (init k-means++, max_iter=100,
            batch_size=10000, tol=0, max_no_improvement=100, n_init=20, reassignment_ratio=0).
    """

    n_clusters: int
    backend: str = "faiss"
    sample_rows: Optional[int] = None
    niter: int = 20
    init: str = "k-means++"
    init_rows: int = 65536
    seed: int = 0
    nredo: int = 1
    gpu: Optional[bool] = None
    sklearn_max_iter: int = 100
    sklearn_batch_size: int = 10000
    sklearn_max_no_improvement: int = 100
    sklearn_n_init: int = 20
    sklearn_reassignment_ratio: float = 0.0

    def __post_init__(self):
        if type(self.n_clusters) is not int or not 1 <= self.n_clusters <= MAX_CODEBOOK_SIZE:
            raise FeatureError(f"n_clusters must be an int in [1, {MAX_CODEBOOK_SIZE}], got {self.n_clusters!r}")
        if self.sample_rows is not None and (type(self.sample_rows) is not int or self.sample_rows < 1):
            raise FeatureError(f"sample_rows must be None or an int >= 1, got {self.sample_rows!r}")
        if self.init not in ("k-means++", "random"):
            raise FeatureError(f"k-means init must be 'k-means++' or 'random', got {self.init!r}")
        if self.backend not in ("faiss", "sklearn"):
            raise FeatureError(f"k-means backend must be 'faiss' or 'sklearn', got {self.backend!r}")


def sq_distances(x: torch.Tensor, centroids: torch.Tensor, c_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared euclidean distances ``[N, K]`` between rows ``x [N, D]`` and ``centroids [K, D]``."""
    c_sq = (centroids * centroids).sum(1) if c_sq is None else c_sq
    d = (x * x).sum(1, keepdim=True) - 2.0 * (x @ centroids.T) + c_sq[None, :]
    return d.clamp_min_(0.0)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row: ``x [N, D]`` -> (labels int64 ``[N]``, squared distance ``[N]``).

    Works in chunks of rows so memory stays ``chunk * K`` floats.
    """
    if x.dim() != 2 or x.shape[1] != centroids.shape[1]:
        raise FeatureError(f"features must be [N, {centroids.shape[1]}], got {tuple(x.shape)}")
    chunk = chunk or max(1, (1 << 24) // max(1, centroids.shape[0]))
    x = x.to(centroids.device, centroids.dtype)
    c_sq = (centroids * centroids).sum(1)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dists = torch.empty(x.shape[0], dtype=centroids.dtype, device=x.device)
    for a in range(0, x.shape[0], chunk):
        d = sq_distances(x[a: a + chunk], centroids, c_sq)
        dists[a: a + chunk], labels[a: a + chunk] = d.min(dim=1)
    return labels, dists


@dataclass(frozen=True, eq=False)
class KMeansModel:
    """Centroids ``[K, D]`` float32 with the `FeatureSpec` they were trained on."""

    centroids: torch.Tensor
    spec: Optional[FeatureSpec] = None
    info: dict = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def hash(self) -> str:
        """sha256 of the centroids' bytes and the feature spec: the identity of the units."""
        h = hashlib.sha256(self.centroids.detach().cpu().float().contiguous().numpy().tobytes())
        h.update((self.spec.digest() if self.spec else "nospec").encode())
        return h.hexdigest()

    def predict(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Units of ``[N, D]`` -> ``[N]``, or of ``[B, T, D]`` -> ``[B, T]`` with -1 past ``lengths``."""
        c = self.centroids
        if feats.dim() == 2:
            return assign(feats, c)[0]
        if feats.dim() != 3:
            raise FeatureError(f"features must be [N, D] or [B, T, D], got {tuple(feats.shape)}")
        B, T, D = feats.shape
        labels = assign(feats.reshape(B * T, D), c)[0].reshape(B, T)
        if lengths is not None:
            mask = torch.arange(T, device=labels.device)[None] < lengths.to(labels.device)[:, None]
            labels = labels.masked_fill(~mask, -1)
        return labels

    def inertia(self, data: Union[FeatureStore, np.ndarray, torch.Tensor], chunk_rows: int = 65536) -> float:
        """Sum of squared distances to the nearest centroid over all rows of ``data``."""
        chunks = data.iter_chunks(chunk_rows) if isinstance(data, FeatureStore) else \
            (data[a: a + chunk_rows] for a in range(0, len(data), chunk_rows))
        total = 0.0
        for ch in chunks:
            total += float(assign(torch.as_tensor(np.asarray(ch, dtype=np.float32)), self.centroids)[1].double().sum())
        return total

    def to(self, device) -> "KMeansModel":
        return KMeansModel(self.centroids.to(device), self.spec, self.info)

    # ----------------------------------------------------------------- I/O
    def save(self, path: Union[str, Path]) -> Path:
        """Write ``path`` (.safetensors) atomically."""
        from safetensors.torch import save_file

        from speechtok.atomic import atomic_path

        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "spec": json.dumps(self.spec.to_dict() if self.spec else None), "info": json.dumps(self.info)}
        with atomic_path(path) as tmp:
            save_file({"centroids": self.centroids.detach().cpu().float().contiguous()}, str(tmp), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: Union[str, Path], device: str = "cpu") -> "KMeansModel":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FeatureError(f"{path}: no such k-means file")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                cents = f.get_tensor("centroids")
        except Exception as e:  # safetensors raises its own types
            raise FeatureError(f"{path}: unreadable k-means file ({safe_text(e, 120)})") from e
        check_format(meta, path, FORMAT, FORMAT_VERSION, FeatureError, "k-means file")
        check_centroids(cents, path)
        try:
            spec, info = json.loads(meta.get("spec", "null")), json.loads(meta.get("info", "{}"))
        except json.JSONDecodeError as e:
            raise FeatureError(f"{path}: k-means metadata is not valid JSON ({e})") from e
        if not isinstance(info, dict):
            raise FeatureError(f"{path}: k-means 'info' must be a JSON object")
        spec = FeatureSpec.from_dict(spec, path) if spec is not None else None
        if spec is not None and spec.dim != cents.shape[1]:
            raise FeatureError(f"{path}: {cents.shape[1]}-d centroids but the feature spec says dim {spec.dim}")
        return cls(cents, spec, info)


def check_centroids(cents, path) -> None:
    """Refuse centroids that are not a finite float ``[K, D]`` with K, D within bounds."""
    if not isinstance(cents, torch.Tensor) or cents.dim() != 2 or not cents.is_floating_point():
        raise FeatureError(f"{path}: centroids must be a float [K, D] tensor, got "
                           f"{getattr(cents, 'dtype', type(cents).__name__)} {tuple(getattr(cents, 'shape', ()))}")
    K, D = cents.shape
    if not 1 <= K <= MAX_CODEBOOK_SIZE or not 1 <= D <= MAX_FEATURE_DIM:
        raise FeatureError(f"{path}: centroids [{K}, {D}] outside [1, {MAX_CODEBOOK_SIZE}] x [1, {MAX_FEATURE_DIM}]")
    if not bool(torch.isfinite(cents).all()):
        raise FeatureError(f"{path}: centroids hold NaN or Inf")


# --------------------------------------------------------------------------- training
def _training_rows(data, config: KMeansConfig) -> tuple[np.ndarray, Optional[FeatureSpec]]:
    if isinstance(data, FeatureStore):
        n = config.sample_rows or min(data.num_rows, 256 * config.n_clusters)
        return data.sample(n, seed=config.seed), data.spec
    x = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if config.sample_rows and config.sample_rows < len(x):
        rng = np.random.default_rng(config.seed)
        x = x[np.sort(rng.choice(len(x), config.sample_rows, replace=False))]
    return x, None


def kmeans_plus_plus(x: torch.Tensor, k: int, seed: int = 0, n_trials: Optional[int] = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; sklearn's variant with ``2 + log k``
    candidates per step): ``x [N, D]`` -> ``[k, D]`` initial centroids."""
    import math

    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    n_trials = n_trials or 2 + int(math.log(k))
    x_sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=g))
    cents = [x[first]]
    closest = (x_sq - 2 * x @ x[first] + x_sq[first]).clamp_min(0)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than k: fill with random rows
            cand = torch.randint(n, (n_trials,), generator=g)
        else:
            cand = torch.multinomial(closest / total, n_trials, replacement=True, generator=g)
        d = (x_sq[None, :] - 2 * x[cand] @ x.T + x_sq[cand][:, None]).clamp_min(0)
        new = torch.minimum(closest[None, :], d)
        best = int(new.sum(1).argmin())
        closest = new[best]
        cents.append(x[cand[best]])
    return torch.stack(cents)


def _faiss_train(x: np.ndarray, config: KMeansConfig) -> np.ndarray:
    import faiss

    gpu = config.gpu if config.gpu is not None else (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)
    best, best_obj = None, float("inf")
    for r in range(max(1, config.nredo)):  # independent restarts, the lowest training inertia wins
        km = faiss.Kmeans(x.shape[1], config.n_clusters, niter=config.niter, seed=config.seed + r, gpu=bool(gpu),
                          max_points_per_centroid=max(1, -(-len(x) // config.n_clusters)),
                          min_points_per_centroid=1, verbose=False)
        init = None
        if config.init == "k-means++":
            rng = np.random.default_rng(config.seed + r)
            sub = x if len(x) <= config.init_rows else x[rng.choice(len(x), config.init_rows, replace=False)]
            init = kmeans_plus_plus(torch.from_numpy(np.ascontiguousarray(sub)), config.n_clusters, config.seed + r)
            init = np.ascontiguousarray(init.numpy(), dtype=np.float32)
        km.train(x, init_centroids=init)
        obj = float(km.obj[-1]) if len(km.obj) else float("inf")
        if best is None or obj < best_obj:
            best, best_obj = np.asarray(km.centroids, dtype=np.float32).copy(), obj
    return best


def _sklearn_train(x: np.ndarray, config: KMeansConfig) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=config.n_clusters, init="k-means++", max_iter=config.sklearn_max_iter,
                         batch_size=config.sklearn_batch_size, tol=0.0, compute_labels=False,
                         max_no_improvement=config.sklearn_max_no_improvement, init_size=None,
                         n_init=config.sklearn_n_init, reassignment_ratio=config.sklearn_reassignment_ratio,
                         random_state=config.seed)
    km.fit(x)
    return np.asarray(km.cluster_centers_, dtype=np.float32)


def train_kmeans(data: Union[FeatureStore, np.ndarray, torch.Tensor], config: KMeansConfig,
                 spec: Optional[FeatureSpec] = None) -> KMeansModel:
    """Train k-means on a feature store (sampled, out of core) or an ``[N, D]`` array.

    ``info`` of the result records the backend, rows used, seconds and the training inertia.
    """
    x, store_spec = _training_rows(data, config)
    spec = spec or store_spec
    if len(x) < config.n_clusters:
        raise FeatureError(f"k-means needs at least K={config.n_clusters} rows, got {len(x)}")
    t0 = time.perf_counter()
    cents = _faiss_train(x, config) if config.backend == "faiss" else _sklearn_train(x, config)
    secs = time.perf_counter() - t0
    model = KMeansModel(torch.from_numpy(cents), spec, {})
    info = {"config": asdict(config), "rows": int(len(x)), "train_seconds": round(secs, 3),
            "train_inertia": model.inertia(x)}
    return KMeansModel(model.centroids, spec, info)


def import_kmeans_pickle(path: Union[str, Path], trust_pickle: bool = False,
                         spec: Optional[FeatureSpec] = None) -> KMeansModel:
    """Convert a fairseq/textlesslib k-means pickle (joblib, sklearn ``KMeans``/``MiniBatchKMeans``)
    into a `KMeansModel` (then `save` it: the safe format). Refused unless ``trust_pickle=True``."""
    path = Path(path)
    if not trust_pickle:
        raise FeatureError(f"{path}: k-means pickles can run code when loaded; pass trust_pickle=True "
                           "(--trust-pickle) if you trust this file, then save the converted model")
    import joblib

    try:
        km = joblib.load(path)
    except Exception as e:
        raise FeatureError(f"{path}: cannot read k-means pickle ({safe_text(e, 120)})") from e
    cents = getattr(km, "cluster_centers_", None)
    if cents is None:
        raise FeatureError(f"{path}: pickle holds {safe_text(type(km).__name__, 60)}, not a fitted sklearn k-means")
    try:
        cents = torch.as_tensor(np.asarray(cents, dtype=np.float32))
    except (TypeError, ValueError) as e:
        raise FeatureError(f"{path}: cluster_centers_ is not a float matrix ({safe_text(e, 80)})") from e
    check_centroids(cents, path)
    return KMeansModel(cents, spec,
                       {"imported_from": path.name, "source_class": type(km).__name__})
