"""CaR selection: the top n1 records by score, then the top n2 of each cluster not already taken."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .clustering import PCA_VARIANCE, SEED, Clusterer
from .errors import UsageError

N1, N2 = 1000, 1  # the paper's sizes, the default of every entry point


@dataclass(frozen=True)
class Size:
    """A selection size as given: a count ("1000", 1000) or a percentage of the records ("2%", floored)."""

    value: float
    percent: bool = False

    @classmethod
    def parse(cls, value, name: str) -> Size:
        """`value` (a Size, an int or a string) for the parameter `name`; errors name the parameter."""
        if isinstance(value, Size):
            return value
        text = str(value).strip()
        try:
            if isinstance(value, bool):
                raise ValueError
            if text.endswith("%"):
                pct = float(text[:-1])
                if not 0 <= pct <= 100:
                    raise ValueError
                return cls(pct, True)
            count = int(text)
            if count < 0:
                raise ValueError
        except ValueError:
            raise UsageError(f"{{{name}}} must be a count >= 0 or a percentage like 2%, got {value!r}", name) from None
        return cls(count)

    def of(self, n: int) -> int:
        """The count for `n` records, at most n."""
        return math.floor(n * self.value / 100) if self.percent else min(int(self.value), n)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))


@dataclass(frozen=True)
class Selection:
    """The result of a CaR selection over n rows."""

    indices: np.ndarray  # selected row numbers: the n1 block (score descending), then cluster picks
    labels: np.ndarray  # cluster id of every row
    scores: np.ndarray  # quality score of every row (float32)
    n_top: int  # how many of `indices` come from the n1 block
    k: int  # clusters
    n_components: int  # PCA dimensions kept
    minibatch: bool  # whether the scalable clustering path ran

    @property
    def reasons(self) -> np.ndarray:
        """Per selected row, why it was kept: "top" (the n1 block) or "cluster" (a per-cluster pick)."""
        return np.array(["top"] * self.n_top + ["cluster"] * (len(self.indices) - self.n_top), dtype=object)

    def take(self, data):
        """The selected rows of `data` (what was selected from), in selection order and in its container: a list,
        a pandas DataFrame, a `datasets.Dataset` or a dict of columns."""
        from .data import take

        return take(data, self.indices)


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


def car_select(scores, embeddings, *, n1=N1, n2=N2, k: int | None = None, pca_variance: float = PCA_VARIANCE,
               seed: int = SEED) -> Selection:
    """CaR: cluster the embeddings (PCA + KMeans, k = int(sqrt(n/2)) by default) and select the top `n1`
    overall plus the top `n2` of every cluster. Sizes may be counts or percentages ("2%")."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 1 or len(scores) != len(embeddings):
        raise UsageError(f"{{scores}} must be 1-D with one value per embedding row, got {scores.shape} for "
                         f"{len(embeddings)}", "scores")
    if not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise UsageError(f"score of row {bad} is {scores[bad]}: {{scores}} must be finite", "scores")
    n = len(scores)
    size1, size2 = Size.parse(n1, "n1"), Size.parse(n2, "n2")
    clusterer = Clusterer(k, pca_variance=pca_variance, seed=seed)
    labels = clusterer.fit_predict(embeddings)
    indices, n_top = select_ranked(scores, labels, size1.of(n), size2.of(n))
    return Selection(indices, labels, scores, n_top, clusterer.k_, clusterer.n_components_, clusterer.minibatch_)
