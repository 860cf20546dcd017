"""PCA + KMeans over sentence embeddings, as the CaR reference runs it (scikit-learn 0.24 defaults)."""

from __future__ import annotations

import math

import numpy as np

from .errors import UsageError

# Above this many rows KMeans (n_init=10, full passes) becomes the slowest stage by far; MiniBatchKMeans
# keeps it near-linear. Below it, results match the reference exactly.
MINIBATCH_THRESHOLD = 100_000
PCA_VARIANCE, SEED = 0.95, 42  # the reference's PCA variance and random_state


def default_k(n: int) -> int:
    """The reference's cluster count: int(sqrt(n / 2)), at least 1."""
    return max(1, int(math.sqrt(n / 2)))


class Clusterer:
    """Reduce with PCA keeping `pca_variance` of the variance, then cluster into `k` groups."""

    def __init__(self, k: int | None = None, *, pca_variance: float = PCA_VARIANCE, seed: int = SEED,
                 minibatch_threshold: int = MINIBATCH_THRESHOLD):
        self.k = k
        self.pca_variance = pca_variance
        self.seed = seed
        self.minibatch_threshold = minibatch_threshold

    def check(self, n: int) -> int:
        """Validate the parameters for `n` rows (before any expensive work); returns the cluster count."""
        if not 0.0 < self.pca_variance <= 1.0:
            raise UsageError(f"{{pca_variance}} must be in (0, 1], got {self.pca_variance}", "pca_variance")
        k = default_k(n) if self.k is None else self.k
        if not 1 <= k <= n:
            raise UsageError(f"{{k}} must be between 1 and the number of records ({n}), got {k}", "k")
        return k

    def fit_predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Cluster id (int64) per row; sets `k_`, `n_components_` and `minibatch_`."""
        from sklearn.cluster import KMeans, MiniBatchKMeans
        from sklearn.decomposition import PCA

        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise UsageError(f"embeddings must be a non-empty 2-D array, got shape {x.shape}")
        n = len(x)
        self.k_ = self.check(n)
        if self.pca_variance < 1.0 and n > 1:
            x = PCA(n_components=self.pca_variance, random_state=self.seed).fit_transform(x)
        self.n_components_ = x.shape[1]
        self.minibatch_ = n > self.minibatch_threshold
        if self.minibatch_:
            km = MiniBatchKMeans(n_clusters=self.k_, random_state=self.seed, n_init=3, batch_size=4096)
        else:
            km = KMeans(n_clusters=self.k_, n_init=10, random_state=self.seed)
        return km.fit_predict(x).astype(np.int64)
