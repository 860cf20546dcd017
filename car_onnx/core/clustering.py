"""PCA + KMeans over sentence embeddings, as the CaR reference runs it (scikit-learn 0.24 defaults)."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from ..errors import UsageError
from .progress import Step
from .rows import rows_of

# Above this many rows KMeans (n_init=10, full passes) becomes the slowest stage by far; MiniBatchKMeans
# keeps it near-linear. Below it, results match the reference exactly.
MINIBATCH_THRESHOLD = 100_000
PCA_VARIANCE, SEED = 0.95, 42  # the reference's PCA variance and random_state
N_INIT = 10  # KMeans initialisations, scikit-learn 0.24's default, which the reference ran
PLANE_SAMPLE = 20_000  # report: at most this many rows (seeded sample) keep their first two PCA coordinates
CLUSTER_MODES = ("auto", "exact", "sample")
EXACT_LIMIT = 1_000_000  # cluster="auto": exact up to this many rows (~1.6 KB each in memory), sample above
SAMPLE_SIZE = 100_000  # cluster="sample": the rows PCA and KMeans are fitted on (~1.6 KB each)


def default_k(n: int) -> int:
    """The reference's cluster count: int(sqrt(n / 2)), at least 1."""
    return max(1, int(math.sqrt(n / 2)))


class Clusterer:
    """Reduce with PCA keeping `pca_variance` of the variance, then cluster into `k` groups. `log` is told the
    steps (PCA, each KMeans initialisation, the assignment) that run past progress.DELAY seconds."""

    def __init__(
        self,
        k: int | None = None,
        *,
        pca_variance: float = PCA_VARIANCE,
        seed: int = SEED,
        mode: str = "auto",
        sample_size: int = SAMPLE_SIZE,
        minibatch_threshold: int = MINIBATCH_THRESHOLD,
        log: Callable[[str], None] | None = None,
    ):
        self.k = k
        self.pca_variance = pca_variance
        self.seed = seed
        self.mode = mode
        self.sample_size = sample_size
        self.minibatch_threshold = minibatch_threshold
        self.log = log

    def sampled(self, n: int) -> bool:
        """Whether `n` rows are clustered from a sample: mode "sample" (when n exceeds the sample), or "auto" above
        EXACT_LIMIT rows."""
        limit = EXACT_LIMIT if self.mode == "auto" else self.sample_size if self.mode == "sample" else n
        return n > max(limit, self.sample_size)

    def check(self, n: int | None = None) -> int | None:
        """Validate the parameters (for `n` rows, if given) before any expensive work; returns the cluster count."""
        if not 0.0 < self.pca_variance <= 1.0:
            raise UsageError(f"{{pca_variance}} must be in (0, 1], got {self.pca_variance}", "pca_variance")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise UsageError(f"{{k}} must be an integer >= 1, got {self.k!r}", "k")
        if self.mode not in CLUSTER_MODES:
            raise UsageError(f"{{cluster}} must be one of {', '.join(CLUSTER_MODES)}, got {self.mode!r}", "cluster")
        if isinstance(self.sample_size, bool) or not isinstance(self.sample_size, int) or self.sample_size < 2:
            raise UsageError(f"{{sample_size}} must be an integer >= 2, got {self.sample_size!r}", "sample_size")
        if n is None:
            return None
        k = default_k(n) if self.k is None else self.k
        if not 1 <= k <= n:
            raise UsageError(f"{{k}} must be between 1 and the number of records ({n}), got {k}", "k")
        if self.sampled(n) and k > self.sample_size:
            raise UsageError(
                f"{{k}} = {k} clusters cannot be fitted on a sample of {self.sample_size:,} rows; raise "
                "{sample_size}",
                "k",
                "sample_size",
            )
        return k

    def fit_predict(self, embeddings, rows: np.ndarray | None = None) -> np.ndarray:
        """Cluster id (int64) of each of `rows` (sorted row numbers; default all) of `embeddings` ([n, dim]: an
        array, a memory map, or anything with `shape`, rows by sorted index and `blocks()`); sets `k_`,
        `n_components_`, `variance_kept_`, `minibatch_`, `sampled_` and `plane_`. In sample mode PCA and KMeans
        are fitted on a seeded uniform sample of `sample_size` rows and every row is then assigned, a block at a
        time (or by `embeddings.assign(pca, kmeans, out)`, if it has one: car_onnx.ray runs it on the cluster):
        memory is bounded by the sample and the labels, not by n embeddings."""
        n = _count(embeddings, rows)
        self.k_ = self.check(n)
        self.sampled_ = self.sampled(n)
        if not self.sampled_:
            x = np.asarray(embeddings if rows is None else embeddings[rows], dtype=np.float32)
            pca, x = self._pca(x, self.log)
            self.plane_ = _plane(x, self.seed, pca_done=pca is not None)  # report: 2-D map sample
            return self._fit(x, n, self.log).labels_.astype(np.int64)
        labels = self.fit_assign(embeddings, rows, np.empty(len(embeddings), dtype=np.int64))
        return labels if rows is None else labels[rows]

    def fit_assign(self, embeddings, rows: np.ndarray | None, out):
        """Sample mode's fit: PCA and KMeans fitted on a seeded sample of `rows` (sorted; default all), then every
        row of `embeddings` (in `rows` or not) assigned, its cluster id written into `out` (an array-like of
        len(embeddings) rows: in memory, or on disk) a block at a time. Returns `out`; sets what fit_predict
        sets."""
        n = _count(embeddings, rows)
        self.k_, self.sampled_ = self.check(n), True
        step = Step(self.log, f"clustering from a seeded sample of {self.sample_size:,} of {n:,} rows")
        picked = np.sort(np.random.default_rng(self.seed).choice(n, self.sample_size, replace=False))
        x = np.asarray(embeddings[picked if rows is None else rows[picked]], dtype=np.float32)
        pca, x = self._pca(x, step.line)
        plane_rows, xy = _plane(x, self.seed, pca_done=pca is not None)
        self.plane_ = picked[plane_rows], xy
        km, start = self._fit(x, n, step.line), time.perf_counter()
        rows_of(embeddings).assign(pca, km, out)
        step.close(f"assigned {len(embeddings):,} rows to {self.k_} clusters in {time.perf_counter() - start:.1f}s")
        return out

    def _pca(self, x: np.ndarray, log: Callable[[str], None] | None):
        """PCA keeping `pca_variance` of the variance, fitted on `x`: (the PCA or None, x reduced); sets
        `n_components_` and `variance_kept_`. Told to `log` if it runs past the progress delay."""
        from sklearn.decomposition import PCA

        pca, self.variance_kept_ = None, 1.0
        if self.pca_variance < 1.0 and len(x) > 1:
            start = time.perf_counter()
            step = Step(log, f"PCA of {len(x):,} x {x.shape[1]} embeddings ...")
            pca = PCA(n_components=self.pca_variance, random_state=self.seed)
            x = pca.fit_transform(x)
            self.variance_kept_ = float(pca.explained_variance_ratio_.sum())
            step.close(
                f"PCA kept {x.shape[1]} components ({self.variance_kept_:.1%} of the variance) in "
                f"{time.perf_counter() - start:.1f}s"
            )
        self.n_components_ = x.shape[1]
        return pca, x

    def _fit(self, x: np.ndarray, n: int, log: Callable[[str], None] | None):
        """KMeans fitted on `x` (MiniBatchKMeans when the `n` rows clustered exceed `minibatch_threshold`); sets
        `minibatch_`. Told to `log` if it runs past the progress delay."""
        from sklearn.cluster import MiniBatchKMeans

        self.minibatch_ = n > self.minibatch_threshold
        start = time.perf_counter()
        if self.minibatch_:
            step = Step(log, f"MiniBatchKMeans k={self.k_} on {len(x):,} rows ...")
            km = MiniBatchKMeans(n_clusters=self.k_, random_state=self.seed, n_init=3, batch_size=4096).fit(x)
        else:
            step = Step(log)
            km = self._kmeans(x, step.line)
        step.close(f"{'MiniBatchKMeans' if self.minibatch_ else 'KMeans'} done in {time.perf_counter() - start:.1f}s")
        return km

    def _kmeans(self, x: np.ndarray, log: Callable[[str], None]) -> np.ndarray:
        """KMeans(n_init=10, random_state=seed), one initialisation at a time so that progress can be told: the
        same RandomState feeds every run in turn and the best is kept by scikit-learn's own rule, so the fit is
        that of a single KMeans(n_init=10) call (tested against it)."""
        from sklearn.cluster import KMeans

        rng, best, start = np.random.RandomState(self.seed), None, time.perf_counter()
        for i in range(1, N_INIT + 1):
            km = KMeans(n_clusters=self.k_, n_init=1, random_state=rng).fit(x)
            if best is None or (km.inertia_ < best.inertia_ and not _same_clustering(km.labels_, best.labels_)):
                best = km
            spent = time.perf_counter() - start
            log(
                f"KMeans k={self.k_} on {len(x):,} rows: run {i}/{N_INIT} of its initialisations, "
                f"{i / spent:.2f} runs/s, ETA {spent / i * (N_INIT - i):.0f}s"
            )
        return best


def _count(embeddings, rows: np.ndarray | None) -> int:
    """How many rows are clustered: all of `embeddings` (2-D, not empty), or `rows`."""
    n = len(embeddings) if rows is None else len(rows)
    if len(getattr(embeddings, "shape", ())) != 2 or n == 0:
        raise UsageError(f"embeddings must be a non-empty 2-D array, got shape {getattr(embeddings, 'shape', None)}")
    return n


def assign(block, pca, km) -> np.ndarray:
    """The cluster ids (int64) of one block of embedding rows under a fitted PCA (or None) and KMeans."""
    block = np.asarray(block, dtype=np.float32)
    return km.predict(pca.transform(block) if pca is not None else block).astype(np.int64)


def _same_clustering(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether labels `a` map onto `b` (a relabelling of the same clusters), as scikit-learn decides it."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(pairs[0]) == len(np.unique(a))


def _plane(x: np.ndarray, seed: int, pca_done: bool) -> tuple[np.ndarray, np.ndarray]:
    """For the report's 2-D map: a seeded sample of at most PLANE_SAMPLE rows (sorted row numbers) and their first
    two PCA coordinates (their full embeddings when no PCA ran: the report projects them if asked for)."""
    rows = np.sort(np.random.default_rng(seed).choice(len(x), min(len(x), PLANE_SAMPLE), replace=False))
    return rows, np.array(x[rows, :2] if pca_done else x[rows], dtype=np.float32)
