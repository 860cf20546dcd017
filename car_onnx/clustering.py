"""PCA + KMeans over sentence embeddings, as the CaR reference runs it (scikit-learn 0.24 defaults)."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from .errors import UsageError

# Above this many rows KMeans (n_init=10, full passes) becomes the slowest stage by far; MiniBatchKMeans
# keeps it near-linear. Below it, results match the reference exactly.
MINIBATCH_THRESHOLD = 100_000
PCA_VARIANCE, SEED = 0.95, 42  # the reference's PCA variance and random_state
N_INIT = 10  # KMeans initialisations, scikit-learn 0.24's default, which the reference ran
PLANE_SAMPLE = 20_000  # report: at most this many rows (seeded sample) keep their first two PCA coordinates


def default_k(n: int) -> int:
    """The reference's cluster count: int(sqrt(n / 2)), at least 1."""
    return max(1, int(math.sqrt(n / 2)))


class Clusterer:
    """Reduce with PCA keeping `pca_variance` of the variance, then cluster into `k` groups."""

    def __init__(self, k: int | None = None, *, pca_variance: float = PCA_VARIANCE, seed: int = SEED,
                 minibatch_threshold: int = MINIBATCH_THRESHOLD, log: Callable[[str], None] | None = None):
        self.k = k
        self.pca_variance = pca_variance
        self.seed = seed
        self.minibatch_threshold = minibatch_threshold
        self.log = log

    def check(self, n: int | None = None) -> int | None:
        """Validate the parameters (for `n` rows, if given) before any expensive work; returns the cluster count."""
        if not 0.0 < self.pca_variance <= 1.0:
            raise UsageError(f"{{pca_variance}} must be in (0, 1], got {self.pca_variance}", "pca_variance")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise UsageError(f"{{k}} must be an integer >= 1, got {self.k!r}", "k")
        if n is None:
            return None
        k = default_k(n) if self.k is None else self.k
        if not 1 <= k <= n:
            raise UsageError(f"{{k}} must be between 1 and the number of records ({n}), got {k}", "k")
        return k

    def fit_predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Cluster id (int64) per row; sets `k_`, `n_components_`, `variance_kept_` and `minibatch_`."""
        from sklearn.cluster import MiniBatchKMeans
        from sklearn.decomposition import PCA

        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise UsageError(f"embeddings must be a non-empty 2-D array, got shape {x.shape}")
        n = len(x)
        self.k_ = self.check(n)
        log = self.log or (lambda message: None)
        self.variance_kept_ = 1.0
        if self.pca_variance < 1.0 and n > 1:
            start = time.perf_counter()
            log(f"PCA of {n:,} x {x.shape[1]} embeddings ...")
            pca = PCA(n_components=self.pca_variance, random_state=self.seed)
            x = pca.fit_transform(x)
            self.variance_kept_ = float(pca.explained_variance_ratio_.sum())
            log(f"PCA kept {x.shape[1]} components ({self.variance_kept_:.1%} of the variance) in "
                f"{time.perf_counter() - start:.1f}s")
        self.n_components_ = x.shape[1]
        self.plane_ = _plane(x, self.seed, pca_done=self.pca_variance < 1.0 and n > 1)  # report: 2-D map sample
        self.minibatch_ = n > self.minibatch_threshold
        start = time.perf_counter()
        if self.minibatch_:
            log(f"MiniBatchKMeans k={self.k_} on {n:,} rows ...")
            km = MiniBatchKMeans(n_clusters=self.k_, random_state=self.seed, n_init=3, batch_size=4096)
            labels = km.fit_predict(x).astype(np.int64)
        else:
            labels = self._kmeans(x, log)
        log(f"{'MiniBatchKMeans' if self.minibatch_ else 'KMeans'} done in {time.perf_counter() - start:.1f}s")
        return labels

    def _kmeans(self, x: np.ndarray, log: Callable[[str], None]) -> np.ndarray:
        """KMeans(n_init=10, random_state=seed), one initialisation at a time so that progress can be told: the
        same RandomState feeds every run in turn and the best is kept by scikit-learn's own rule, so the labels are
        those of a single KMeans(n_init=10) call (tested against it)."""
        from sklearn.cluster import KMeans

        rng, best, start = np.random.RandomState(self.seed), None, time.perf_counter()
        for i in range(1, N_INIT + 1):
            km = KMeans(n_clusters=self.k_, n_init=1, random_state=rng).fit(x)
            if best is None or (km.inertia_ < best.inertia_ and not _same_clustering(km.labels_, best.labels_)):
                best = km
            spent = time.perf_counter() - start
            log(f"KMeans k={self.k_} on {len(x):,} rows: run {i}/{N_INIT} of its initialisations, "
                f"{i / spent:.2f} runs/s, ETA {spent / i * (N_INIT - i):.0f}s")
        return best.labels_.astype(np.int64)


def _same_clustering(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether labels `a` map onto `b` (a relabelling of the same clusters), as scikit-learn decides it."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(pairs[0]) == len(np.unique(a))


def _plane(x: np.ndarray, seed: int, pca_done: bool) -> tuple[np.ndarray, np.ndarray]:
    """For the report's 2-D map: a seeded sample of at most PLANE_SAMPLE rows (sorted row numbers) and their first
    two PCA coordinates (their full embeddings when no PCA ran: the report projects them if asked for)."""
    rows = np.sort(np.random.default_rng(seed).choice(len(x), min(len(x), PLANE_SAMPLE), replace=False))
    return rows, np.array(x[rows, :2] if pca_done else x[rows], dtype=np.float32)
