"""CaR selection: the top n1 records by score, then the top n2 of each cluster not already taken."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np

from ..errors import UsageError
from .clustering import PCA_VARIANCE, SAMPLE_SIZE, SEED, Clusterer
from .columns import Kept, count_kept
from .rows import BLOCK_ROWS, blocks, rows_of

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
class SelectOptions:
    """What a CaR selection is asked for, parsed once (sizes and dedup rule checked here, the clustering by
    `clusterer().check()`): the one object `car-onnx select`, `Model.select`, `car_onnx.ray.select` and
    `pipeline.select` share."""

    n1: Size
    n2: Size
    k: int | None
    pca_variance: float
    seed: int
    dedup: Dedup
    cluster: str
    sample_size: int

    @classmethod
    def parse(
        cls,
        *,
        n1=N1,
        n2=N2,
        k: int | None = None,
        pca_variance: float = PCA_VARIANCE,
        seed: int = SEED,
        dedup="exact",
        cluster: str = "auto",
        sample_size: int = SAMPLE_SIZE,
    ) -> SelectOptions:
        """The options as given (counts, "2%" strings, "near:0.9"); an error names the option."""
        size1, size2, dedup = Size.parse(n1, "n1"), Size.parse(n2, "n2"), Dedup.parse(dedup)
        return cls(size1, size2, k, pca_variance, seed, dedup, cluster, sample_size)

    def clusterer(self, log: Callable[[str], None] | None = None) -> Clusterer:
        return Clusterer(
            self.k,
            pca_variance=self.pca_variance,
            seed=self.seed,
            mode=self.cluster,
            sample_size=self.sample_size,
            log=log,
        )

    def select(self, scores, embeddings, *, duplicate_of=None, log=None, labels=None) -> Selection:
        """The CaR selection with these options (`car_select` says what each argument may be; duplicate_of: the
        exact duplicates found, if the dedup rule asks for them)."""
        scores = scores if hasattr(scores, "shape") else np.asarray(scores, dtype=np.float32)
        if len(scores.shape) != 1 or len(scores) != len(embeddings):
            raise UsageError(
                f"{{scores}} must be 1-D with one value per embedding row, got {scores.shape} for {len(embeddings)}",
                "scores",
            )
        n = len(scores)
        for first, block in blocks(scores):
            block = np.asarray(block, dtype=np.float32)
            if not np.isfinite(block).all():
                bad = int(np.flatnonzero(~np.isfinite(block))[0])
                raise UsageError(f"score of row {first + bad} is {block[bad]}: {{scores}} must be finite", "scores")
        size1, size2, near = self.n1, self.n2, self.dedup.near
        dup = (
            np.full(n, -1, dtype=np.int64)
            if duplicate_of is None
            else duplicate_of
            if hasattr(duplicate_of, "shape")
            else np.asarray(duplicate_of, dtype=np.int64)
        )
        kept = count_kept(dup)
        if size1.covers(kept):
            warnings.warn(
                f"n1 = {size1} is at or above the {kept} records to rank: every record is selected", stacklevel=2
            )
        clusterer = self.clusterer(log)
        check_clustering(clusterer, kept, near)
        if clusterer.sampled(kept):
            return _select_sampled(scores, embeddings, dup, kept, size1, size2, clusterer, labels)
        scores, dup = np.asarray(scores[:], dtype=np.float32), np.array(dup[:], dtype=np.int64)
        ranked = np.flatnonzero(dup < 0)
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
        return Selection(
            indices,
            labels,
            scores,
            n_top,
            clusterer.k_,
            clusterer.n_components_,
            clusterer.minibatch_,
            dup,
            clusterer.variance_kept_,
            clusterer.sampled_,
            plane=(ranked[rows], xy),
        )


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

    @property
    def ranks(self) -> np.ndarray:
        """Per row, its place by score among the ranked rows (1 = best; 0 for a dropped duplicate)."""
        ranked = np.flatnonzero(np.asarray(self.duplicate_of[:]) < 0)
        order = ranked[np.argsort(-np.asarray(self.scores[:])[ranked].astype(np.float64), kind="stable")]
        ranks = np.zeros(len(self.scores), dtype=np.int64)
        ranks[order] = np.arange(1, len(order) + 1)
        return ranks

    def ranks_of(self, rows) -> np.ndarray:
        """`ranks` of the given rows only, counted a block at a time: memory bounded by `rows`, not by n."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.int64)
        kept = self.duplicate_of[rows] < 0

        def ranked():
            for first, part in blocks(self.duplicate_of):
                yield first, self.scores[first : first + len(part)], np.where(part < 0, 0, -1)

        out[kept] = ranks_streamed(ranked, rows[kept], self.scores[rows[kept]])
        return out

    @property
    def reasons(self) -> np.ndarray:
        """Per selected row, why it was kept: "top" (the n1 block) or "cluster" (a per-cluster pick)."""
        return np.array(["top"] * self.n_top + ["cluster"] * (len(self.indices) - self.n_top), dtype=object)


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
        picks.extend(int(i) for i in members[: n2.of(len(members), at_least=1)] if not taken[i])
    return np.concatenate([top, np.asarray(picks, dtype=np.int64)]).astype(np.int64), len(top)


class _Best:
    """The best rows seen so far by (score descending, row ascending), at most `limit[g]` of each group g, fed
    blocks of rows in any order: a buffer pruned to the limits when it doubles, so memory is that of the limits
    and a block, whatever the rows fed."""

    def __init__(self, limit: np.ndarray):
        self.limit = np.asarray(limit, dtype=np.int64)
        self.cap = max(2 * int(self.limit.sum()), BLOCK_ROWS)
        self.bar = np.where(self.limit > 0, np.inf, -np.inf)  # a row can enter its group if -score <= bar
        self.parts: list[tuple] = []
        self.held = 0

    def feed(self, rows: np.ndarray, neg: np.ndarray, group: np.ndarray) -> None:
        """Rows with their negated scores (float64) and groups."""
        keep = neg <= self.bar[group]  # a tie with the group's worst kept row is settled by row at the next prune
        self.parts.append((rows[keep], neg[keep], group[keep]))
        self.held += int(keep.sum())
        if self.held > self.cap:
            self._prune()

    def _prune(self) -> None:
        rows, neg, group = (np.concatenate(a) for a in zip(*self.parts)) if self.parts else (np.zeros(0),) * 3
        order = np.lexsort((rows, neg, group))
        rows, neg, group = rows[order].astype(np.int64), neg[order], group[order].astype(np.int64)
        keep = np.arange(len(rows)) - np.searchsorted(group, group) < self.limit[group]  # place within its group
        rows, neg, group = rows[keep], neg[keep], group[keep]
        full = np.flatnonzero(np.bincount(group, minlength=len(self.limit)) == self.limit)
        last = np.searchsorted(group, full, side="right") - 1
        self.bar[full[self.limit[full] > 0]] = neg[last[self.limit[full] > 0]]
        self.parts, self.held = [(rows, neg, group)], len(rows)

    def rows(self) -> np.ndarray:
        """The rows kept, by group, then by score descending and row."""
        self._prune()
        return self.parts[0][0]


def _sizes(block: tuple, k: int) -> np.ndarray:
    """How many rows of one block (first row, scores, labels) each of `k` clusters has (labels -1: none)."""
    labels = block[2]
    return np.bincount(labels[labels >= 0], minlength=k)


def _candidates(block: tuple, n1: int, limit: np.ndarray) -> tuple:
    """The rows of one block (first row, scores, labels) that can be selected: its best `n1` overall and its best
    `limit[c]` of each cluster c, with their negated scores and clusters; the rows of the selection are among
    the blocks' candidates."""
    first, scores, labels = block
    rows, neg = np.flatnonzero(labels >= 0), -np.asarray(scores, dtype=np.float64)
    top, best = _Best(np.array([n1])), _Best(limit)
    top.feed(rows, neg[rows], np.zeros(len(rows), dtype=np.int64))
    best.feed(rows, neg[rows], labels[rows])
    keep = np.union1d(top.rows(), best.rows()).astype(np.int64)
    return keep + first, neg[keep], labels[keep]


def select_streamed(labelled: Callable, n1: int, n2: Size, k: int, over=map) -> tuple[np.ndarray, int]:
    """select_ranked with the rows given a block at a time: `labelled()` yields (first row, scores, labels) in row
    order (labels -1: no part) and is called twice. The per-block work is mapped by `over(fn, items)` (here, or
    by car_onnx.ray on the cluster): each block's rows per cluster (a group-by count: the clusters' sizes, for a
    percentage n2), then each block's candidates (its top n1, its top n2 of each cluster), merged here by a
    running top-k and a running top-k per cluster. Memory: a few blocks, the n1 block and the clusters' picks,
    never n rows; the result is select_ranked's (tested)."""
    sizes = sum(over(partial(_sizes, k=k), labelled()), np.zeros(k, dtype=np.int64))
    limit = np.array([n2.of(int(s), at_least=1) if s else 0 for s in sizes], dtype=np.int64)
    top, best = _Best(np.array([n1])), _Best(limit)
    for rows, neg, group in over(partial(_candidates, n1=n1, limit=limit), labelled()):
        top.feed(rows, neg, np.zeros(len(rows), dtype=np.int64))
        best.feed(rows, neg, group)
    chosen, picks = top.rows(), best.rows()
    return np.concatenate([chosen, picks[~np.isin(picks, chosen)]]).astype(np.int64), len(chosen)


def ranks_streamed(labelled: Callable, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The place by score (1 = best; ties by row) of each of `rows`, whose scores are `scores`, among the rows
    `labelled()` gives with a label >= 0 (as in select_streamed), counted a block at a time."""
    rows, neg = np.asarray(rows, dtype=np.int64), -np.asarray(scores, dtype=np.float64)
    ranks = np.ones(len(rows), dtype=np.int64)
    for first, block, labels in labelled():
        mine = np.flatnonzero(labels >= 0)
        if not len(mine):
            continue
        theirs = -np.asarray(block, dtype=np.float64)[mine]
        order = np.lexsort((mine, theirs))
        values, run = np.unique(theirs[order], return_inverse=True)
        # (score, row) as one sortable integer: the score's place among the block's values, then the row
        span = max(int(rows.max(initial=0)), first + len(block)) + 1
        key = run.reshape(-1) * span + mine[order] + first
        at = np.searchsorted(values, neg)
        tie = (at < len(values)) & (values[np.minimum(at, len(values) - 1)] == neg)
        ranks += np.searchsorted(key, at * span + np.where(tie, rows, 0))
    return ranks


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
        raise UsageError(
            "{dedup} near:T compares records within each cluster in memory: it needs {cluster} exact",
            "dedup",
            "cluster",
        )


def car_select(
    scores,
    embeddings,
    *,
    n1=N1,
    n2=N2,
    k: int | None = None,
    pca_variance: float = PCA_VARIANCE,
    seed: int = SEED,
    near: float | None = None,
    duplicate_of=None,
    cluster: str = "auto",
    sample_size: int = SAMPLE_SIZE,
    log: Callable[[str], None] | None = None,
    labels=None,
) -> Selection:
    """CaR: cluster the embeddings (PCA + KMeans, k = int(sqrt(n/2)) by default) and select the top `n1`
    overall plus the top `n2` of every cluster. Sizes may be counts or percentages ("2%"; n2 of each cluster).
    `duplicate_of` (per row: the row it repeats, or -1) leaves duplicates out of clustering and ranking; `near`
    also drops, within each cluster, records whose cosine to a higher-scored kept one is >= near. `cluster`:
    "exact" fits PCA and KMeans on every row; "sample" on a seeded sample of `sample_size` rows, then assigns
    every row (memory bounded by the sample; `embeddings` may be a memory map or a work directory's rows);
    "auto" is exact up to clustering.EXACT_LIMIT rows. In sample mode `scores` and `duplicate_of` may be
    array-likes on disk, read a block at a time, and the labels are written into `labels`, if given (e.g. a
    columns.Column): the Selection then holds them as they are."""
    options = SelectOptions(
        Size.parse(n1, "n1"), Size.parse(n2, "n2"), k, pca_variance, seed, Dedup(False, near), cluster, sample_size
    )
    return options.select(scores, embeddings, duplicate_of=duplicate_of, log=log, labels=labels)


def _select_sampled(
    scores, embeddings, dup, kept: int, size1: Size, size2: Size, clusterer: Clusterer, labels
) -> Selection:
    """car_select in sample mode, with the scores, the duplicates and the `labels` it fills in memory or on disk
    (array-likes read and written a block at a time, e.g. columns.Column): memory is bounded by the sample and the
    selection, not by n."""
    n = len(scores)
    labels = np.empty(n, dtype=np.int64) if labels is None else labels
    ranked = Kept(dup, kept)
    clusterer.fit_assign(embeddings, None if kept == n else ranked, labels)
    for first, part in blocks(dup) if kept < n else ():  # a duplicate has the cluster of the one it repeats
        repeated = np.flatnonzero(part >= 0) + first
        if len(repeated):
            labels[repeated] = labels[_root(dup, repeated)]

    def labelled():
        for first, part in blocks(dup):
            yield first, scores[first : first + len(part)], np.where(part < 0, labels[first : first + len(part)], -1)

    indices, n_top = select_streamed(
        labelled, size1.of(kept), size2, clusterer.k_, rows_of(embeddings).map
    )  # car_onnx.ray: on the cluster
    rows, xy = clusterer.plane_
    return Selection(
        indices,
        labels,
        scores,
        n_top,
        clusterer.k_,
        clusterer.n_components_,
        clusterer.minibatch_,
        dup,
        clusterer.variance_kept_,
        True,
        plane=(rows if kept == n else ranked[rows], xy),
    )


def _root(dup: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The kept record each duplicate row finally repeats (a chain of near-duplicates ends at a kept one)."""
    rows = rows.copy()
    while (dup[rows] >= 0).any():
        rows = np.where(dup[rows] >= 0, dup[rows], rows)
    return rows
