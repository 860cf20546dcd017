"""CaR selection: the top n1 records by score, then the top n2 of each cluster not already taken."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .clustering import Clusterer
from .errors import UsageError


@dataclass(frozen=True)
class Selection:
    indices: np.ndarray  # selected row numbers: the n1 block (score descending), then cluster picks
    labels: np.ndarray  # cluster id of every row
    n_top: int  # how many of `indices` come from the n1 block
    n_components: int  # PCA dimensions kept
    minibatch: bool  # whether the scalable clustering path ran


def parse_size(value: str | int, n: int, name: str) -> int:
    """A count ("1000") or a percentage of n ("2%", floored), clamped to n."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            return math.floor(n * pct / 100)
        count = int(text)
        if count < 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"{name} must be a count >= 0 or a percentage like 2%, got {value!r}") from None
    return min(count, n)


def select_ranked(scores: np.ndarray, labels: np.ndarray, n1: int, n2: int) -> tuple[np.ndarray, int]:
    """The selection rule on given cluster labels; ties keep input order (stable sort)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    top = order[:n1]
    taken = np.zeros(len(order), dtype=bool)
    taken[top] = True
    ranked_labels = labels[order]
    picks = []
    for cluster in np.unique(labels):
        best = order[ranked_labels == cluster][:n2]
        picks.extend(int(i) for i in best if not taken[i])
    return np.concatenate([top, np.asarray(picks, dtype=np.int64)]).astype(np.int64), len(top)


def car_select(
    scores,
    embeddings,
    *,
    n1: int | str = 1000,
    n2: int | str = 1,
    k: int | None = None,
    pca_variance: float = 0.95,
    seed: int = 42,
) -> Selection:
    """CaR: cluster the embeddings (PCA + KMeans, k = int(sqrt(n/2)) by default) and select the top `n1`
    overall plus the top `n2` of every cluster. Sizes may be counts or percentages ("2%")."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 1 or len(scores) != len(embeddings):
        raise UsageError(f"scores must be 1-D with one value per embedding row, got {scores.shape} for {len(embeddings)}")
    if not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise UsageError(f"score of row {bad} is {scores[bad]}: scores must be finite")
    n = len(scores)
    clusterer = Clusterer(k, pca_variance=pca_variance, seed=seed)
    labels = clusterer.fit_predict(embeddings)
    indices, n_top = select_ranked(scores, labels, parse_size(n1, n, "n1"), parse_size(n2, n, "n2"))
    return Selection(indices, labels, n_top, clusterer.n_components_, clusterer.minibatch_)
