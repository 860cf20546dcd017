"""CaR selection: the top n1 records by score, then the top n2 of each cluster not already taken."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .clustering import PCA_VARIANCE, SAMPLE_SIZE, SEED, Clusterer
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

    def of(self, n: int, at_least: int = 0) -> int:
        """The count for `n` records, at most n (and at least `at_least` of them, for a percentage)."""
        if self.percent:
            return min(n, max(at_least, math.floor(n * self.value / 100)))
        return min(int(self.value), n)

    def covers(self, n: int) -> bool:
        """Whether the size takes all of `n` records."""
        return self.value >= 100 if self.percent else self.value >= n

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))


@dataclass(frozen=True)
class Dedup:
    """Which duplicates are dropped before ranking: "none"; "exact" (later copies of the same whitespace-normalised
    text); "near:T" (exact, and within each cluster every record whose embedding cosine to a higher-scored kept
    record is at least T)."""

    exact: bool = True
    near: float | None = None

    @classmethod
    def parse(cls, value) -> Dedup:
        if isinstance(value, Dedup):
            return value
        text = str(value).strip()
        if text in ("none", "exact"):
            return cls(text == "exact")
        if text.startswith("near:"):
            try:
                threshold = float(text[5:])
            except ValueError:
                threshold = -1.0
            if 0.0 < threshold <= 1.0:
                return cls(True, threshold)
        raise UsageError(f"{{dedup}} must be none, exact or near:T with 0 < T <= 1, got {value!r}", "dedup")

    def __str__(self) -> str:
        return f"near:{self.near:g}" if self.near is not None else "exact" if self.exact else "none"



@dataclass(frozen=True)
class Selection:
    """The result of a CaR selection over n rows."""

    indices: np.ndarray  # selected row numbers: the n1 block (score descending), then cluster picks
    labels: np.ndarray  # cluster id of every row (a duplicate has the cluster of the record it repeats)
    scores: np.ndarray  # quality score of every row (float32)
    n_top: int  # how many of `indices` come from the n1 block
    k: int  # clusters
    n_components: int  # PCA dimensions kept
    minibatch: bool  # whether the scalable clustering path ran
    duplicate_of: np.ndarray  # per row, the row it duplicates (dropped before ranking), or -1
    pca_variance_kept: float = 1.0  # the share of the variance the kept PCA components explain
    sampled: bool = False  # whether PCA and KMeans were fitted on a sample (cluster="sample")
    plane: tuple | None = field(default=None, repr=False, compare=False)  # report: (rows of a seeded sample,
    # their first two PCA coordinates [m, 2])
    context: dict | None = field(default=None, repr=False, compare=False)  # report: Model.select's data and facts

    def report(self, path) -> None:
        """Write the curation report (one offline HTML page) of this selection, as `select --report` does;
        needs the [report] extra. Only for a Selection made by `Model.select` (it keeps the texts it shows)."""
        from . import report

        report.write_selection_report(self, path)

    @property
    def ranks(self) -> np.ndarray:
        """Per row, its place by score among the ranked rows (1 = best; 0 for a dropped duplicate)."""
        ranked = np.flatnonzero(self.duplicate_of < 0)
        order = ranked[np.argsort(-self.scores[ranked].astype(np.float64), kind="stable")]
        ranks = np.zeros(len(self.scores), dtype=np.int64)
        ranks[order] = np.arange(1, len(order) + 1)
        return ranks

    @property
    def reasons(self) -> np.ndarray:
        """Per selected row, why it was kept: "top" (the n1 block) or "cluster" (a per-cluster pick)."""
        return np.array(["top"] * self.n_top + ["cluster"] * (len(self.indices) - self.n_top), dtype=object)

    def take(self, data):
        """The selected rows of `data` (what was selected from), in selection order and in its container: a list,
        a pandas DataFrame, a `datasets.Dataset` or a dict of columns."""
        from .containers import take

        return take(data, self.indices)


def select_ranked(scores: np.ndarray, labels: np.ndarray, n1: int, n2: Size) -> tuple[np.ndarray, int]:
    """The selection rule on given cluster labels (rows labelled -1 take no part); ties keep input order (stable
    sort). A percentage n2 is of each cluster's size, at least one record."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    order = order[labels[order] >= 0]
    top = order[:n1]
    taken = np.zeros(len(scores), dtype=bool)
    taken[top] = True
    ranked_labels = labels[order]
    picks = []
    for cluster in np.unique(ranked_labels):
        members = order[ranked_labels == cluster]
        picks.extend(int(i) for i in members[:n2.of(len(members), at_least=1)] if not taken[i])
    return np.concatenate([top, np.asarray(picks, dtype=np.int64)]).astype(np.int64), len(top)


def near_duplicates(scores: np.ndarray, embeddings, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Within each cluster, from the best score down: a record whose embedding cosine to a kept, higher-scored
    record of its cluster is >= threshold is a duplicate of the most similar such record. Returns duplicate_of
    (-1 for kept rows and rows labelled -1)."""
    dup = np.full(len(scores), -1, dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    for cluster in np.unique(labels[labels >= 0]):
        members = order[labels[order] == cluster]
        x = np.asarray(embeddings[np.sort(members)], dtype=np.float32)
        x = x[np.searchsorted(np.sort(members), members)]  # rows in score order
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        kept: list[int] = []
        for j in range(len(members)):
            if kept:
                sims = x[kept] @ x[j]
                best = int(np.argmax(sims))
                if sims[best] >= threshold:
                    dup[members[j]] = members[kept[best]]
                    continue
            kept.append(j)
    return dup


def check_clustering(clusterer: Clusterer, n: int, near: float | None) -> None:
    """Before any work where possible: the clustering of `n` ranked rows can run with these options."""
    clusterer.check(n)
    if near is not None and clusterer.sampled(n):
        raise UsageError("{dedup} near:T compares records within each cluster in memory: it needs {cluster} exact",
                         "dedup", "cluster")


def car_select(scores, embeddings, *, n1=N1, n2=N2, k: int | None = None, pca_variance: float = PCA_VARIANCE,
               seed: int = SEED, near: float | None = None, duplicate_of=None, cluster: str = "auto",
               sample_size: int = SAMPLE_SIZE, log: Callable[[str], None] | None = None) -> Selection:
    """CaR: cluster the embeddings (PCA + KMeans, k = int(sqrt(n/2)) by default) and select the top `n1`
    overall plus the top `n2` of every cluster. Sizes may be counts or percentages ("2%"; n2 of each cluster).
    `duplicate_of` (per row: the row it repeats, or -1) leaves duplicates out of clustering and ranking; `near`
    also drops, within each cluster, records whose cosine to a higher-scored kept one is >= near. `cluster`:
    "exact" fits PCA and KMeans on every row; "sample" on a seeded sample of `sample_size` rows, then assigns
    every row (memory bounded by the sample; `embeddings` may be a memory map or a work directory's rows);
    "auto" is exact up to clustering.EXACT_LIMIT rows."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 1 or len(scores) != len(embeddings):
        raise UsageError(f"{{scores}} must be 1-D with one value per embedding row, got {scores.shape} for "
                         f"{len(embeddings)}", "scores")
    if not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise UsageError(f"score of row {bad} is {scores[bad]}: {{scores}} must be finite", "scores")
    n = len(scores)
    size1, size2 = Size.parse(n1, "n1"), Size.parse(n2, "n2")
    dup = np.full(n, -1, dtype=np.int64) if duplicate_of is None else np.asarray(duplicate_of, dtype=np.int64).copy()
    ranked = np.flatnonzero(dup < 0)
    if size1.covers(len(ranked)):
        warnings.warn(f"n1 = {size1} is at or above the {len(ranked)} records to rank: every record is selected",
                      stacklevel=2)
    clusterer = Clusterer(k, pca_variance=pca_variance, seed=seed, mode=cluster, sample_size=sample_size, log=log)
    check_clustering(clusterer, len(ranked), near)
    labels = np.full(n, -1, dtype=np.int64)
    labels[ranked] = clusterer.fit_predict(embeddings, None if len(ranked) == n else ranked)
    if near is not None:
        found = near_duplicates(scores, embeddings, labels, near)
        dup[found >= 0] = found[found >= 0]
    eligible = np.where(dup < 0, labels, -1)
    repeated = np.flatnonzero(dup >= 0)
    labels[repeated] = labels[_root(dup, repeated)]
    indices, n_top = select_ranked(scores, eligible, size1.of(int((eligible >= 0).sum())), size2)
    rows, xy = clusterer.plane_
    return Selection(indices, labels, scores, n_top, clusterer.k_, clusterer.n_components_, clusterer.minibatch_,
                     dup, clusterer.variance_kept_, clusterer.sampled_, plane=(ranked[rows], xy))


def _root(dup: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The kept record each duplicate row finally repeats (a chain of near-duplicates ends at a kept one)."""
    rows = rows.copy()
    while (dup[rows] >= 0).any():
        rows = np.where(dup[rows] >= 0, dup[rows], rows)
    return rows
