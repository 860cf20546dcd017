"""car_select against an independent reimplementation of the reference's loop and clustering."""

import math

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from car_onnx import UsageError, car_select
from car_onnx.core import selection
from car_onnx.core.clustering import Clusterer
from car_onnx.core.selection import Size, ranks_streamed, select_ranked, select_streamed


def reference_select(scores, labels, n1, n2, n2_percent=None):
    """The reference: top n1 by score, then each cluster's top n2 (or n2_percent of its size, at least 1; cluster
    ids ascending) not yet taken."""
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable: ties keep input order
    chosen = ranked[:n1]
    for cluster in sorted(set(labels.tolist())):
        members = [i for i in ranked if labels[i] == cluster]
        take = n2 if n2_percent is None else max(1, int(len(members) * n2_percent / 100))
        for i in members[:take]:
            if i not in chosen:
                chosen.append(i)
    return chosen


def blobs(n, dim=16, centers=6, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim)) * 4
    x = c[rng.integers(0, centers, n)] + rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n,n1,n2", [(200, 10, 1), (200, 0, 2), (500, 50, 3), (50, 50, 1), (120, 7, 100)])
def test_car_select_equals_reference(n, n1, n2):
    rng = np.random.default_rng(n + n1)
    scores = rng.normal(size=n).astype(np.float32)
    scores[::7] = scores[0]  # ties must keep input order
    emb = blobs(n)
    sel = car_select(scores, emb, n1=n1, n2=n2)
    k = int(math.sqrt(n / 2))
    reduced = PCA(n_components=0.95, random_state=42).fit_transform(emb)
    labels = KMeans(n_clusters=k, n_init=10, random_state=42).fit_predict(reduced)
    assert sel.labels.tolist() == labels.tolist()
    assert sel.indices.tolist() == reference_select(scores, labels, n1, n2)
    assert sel.n_top == min(n1, n)
    assert len(set(sel.indices.tolist())) == len(sel.indices)


def test_top_block_is_score_descending_and_cluster_picks_follow():
    rng = np.random.default_rng(3)
    scores = rng.random(300).astype(np.float32)
    sel = car_select(scores, blobs(300), n1=20, n2=1)
    top = sel.indices[:20]
    assert list(scores[top]) == sorted(scores, reverse=True)[:20]
    picked_clusters = sel.labels[sel.indices[20:]]
    assert list(picked_clusters) == sorted(picked_clusters)
    for i in sel.indices[20:]:  # each pick is its cluster's best record
        assert scores[i] == scores[sel.labels == sel.labels[i]].max()


def test_explicit_k_and_variance():
    emb = blobs(100)
    sel = car_select(np.zeros(100, np.float32), emb, n1=0, k=3, pca_variance=0.5)
    assert sorted(set(sel.labels.tolist())) == [0, 1, 2]
    assert sel.n_components == PCA(n_components=0.5, random_state=42).fit(emb).n_components_
    assert sel.indices.tolist() == reference_select(np.zeros(100), sel.labels, 0, 1)


@pytest.mark.parametrize(
    "value,n,expected",
    [
        ("1000", 52002, 1000),
        ("2%", 52002, 1040),
        ("0", 10, 0),
        ("100%", 7, 7),
        ("5000", 10, 10),
        (3, 10, 3),
        ("1.5%", 200, 3),
    ],
)
def test_parse_size(value, n, expected):
    assert Size.parse(value, "n1").of(n) == expected


@pytest.mark.parametrize("value", ["-1", "abc", "101%", "2.5", ""])
def test_parse_size_rejects(value):
    with pytest.raises(UsageError, match=rf"^n1 must be a count >= 0 or a percentage like 2%, got '{value}'$"):
        Size.parse(value, "n1")


def test_bad_arguments_name_the_parameter():
    emb = blobs(10)
    with pytest.raises(UsageError, match=r"^k must be between 1 and the number of records \(10\), got 11$"):
        car_select(np.zeros(10), emb, k=11)
    with pytest.raises(UsageError, match=r"^pca_variance must be in \(0, 1\], got 1.5$"):
        car_select(np.zeros(10), emb, pca_variance=1.5)
    with pytest.raises(UsageError, match=r"^score of row 2 is nan: scores must be finite$"):
        car_select(np.array([0, 1, np.nan] + [0] * 7), emb)
    with pytest.raises(UsageError, match=r"one value per embedding row"):
        car_select(np.zeros(9), emb)


def test_single_record():
    sel = car_select(np.array([0.5], np.float32), np.ones((1, 4), np.float32), n1=1)
    assert sel.indices.tolist() == [0] and sel.labels.tolist() == [0]


def test_minibatch_path_above_threshold():
    emb = blobs(400)
    c = Clusterer(None, minibatch_threshold=300)
    labels = c.fit_predict(emb)
    assert c.minibatch_ and c.k_ == int(math.sqrt(200)) and len(labels) == 400
    again = Clusterer(None, minibatch_threshold=300).fit_predict(emb)
    assert labels.tolist() == again.tolist()  # seeded: deterministic
    exact = Clusterer(None)
    exact.fit_predict(emb)
    assert not exact.minibatch_


def test_select_ranked_directly():
    scores = np.array([0.1, 0.9, 0.9, 0.3, 0.8], np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    idx, n_top = select_ranked(scores, labels, 2, Size(1))
    assert idx.tolist() == [1, 2, 4] and n_top == 2


def test_n2_percentage_is_of_each_cluster_with_at_least_one():
    rng = np.random.default_rng(5)
    scores, emb = rng.random(400).astype(np.float32), blobs(400)
    for pct in (5, 30):
        sel = car_select(scores, emb, n1=3, n2=f"{pct}%")
        assert sel.indices.tolist() == reference_select(scores, sel.labels, 3, None, n2_percent=pct)
    assert len(car_select(scores, emb, n1=0, n2="0.1%").indices) == sel.k  # 0.1% of ~30 rows: still one each


def test_sizes_at_or_above_n_warn():
    emb = blobs(20)
    with pytest.warns(UserWarning, match=r"^n1 = 20 is at or above the 20 records to rank: every record is selected$"):
        assert len(car_select(np.zeros(20), emb, n1=20).indices) == 20
    with pytest.warns(UserWarning, match=r"^n1 = 100% is at or above"):
        car_select(np.zeros(20), emb, n1="100%")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        car_select(np.zeros(20), emb, n1=19)


def test_duplicates_are_left_out_of_clustering_and_ranking():
    rng = np.random.default_rng(7)
    scores, emb = rng.random(60).astype(np.float32), blobs(60)
    dup = np.full(60, -1)
    dup[[10, 11, 30]] = [2, 2, 5]
    scores[[10, 11, 30]] = [3.0, 2.0, 1.5]  # the best scores: selected, were they not left out
    sel = car_select(scores, emb, n1=5, n2=1, duplicate_of=dup)
    kept = np.flatnonzero(dup < 0)
    alone = car_select(scores[kept], emb[kept], n1=5, n2=1)  # the same as selecting without those rows at all
    assert sel.indices.tolist() == kept[alone.indices].tolist()
    assert sel.labels[kept].tolist() == alone.labels.tolist()
    assert sel.labels[[10, 11, 30]].tolist() == sel.labels[[2, 2, 5]].tolist()
    assert sel.ranks[[10, 11, 30]].tolist() == [0, 0, 0]
    assert sorted(sel.ranks[kept].tolist()) == list(range(1, len(kept) + 1))
    assert sel.ranks[sel.indices[0]] == 1


def test_near_duplicates_within_a_cluster():
    rng = np.random.default_rng(8)
    emb = blobs(80)
    emb[40] = emb[3] + 1e-4  # a near copy of row 3
    emb[41] = -emb[3]  # far from it
    scores = rng.random(80).astype(np.float32)
    scores[3], scores[40] = 0.99, 0.98  # row 40 scores below row 3
    sel = car_select(scores, emb, n1=0, n2=1, near=0.999)
    assert sel.duplicate_of[40] == 3 and sel.labels[40] == sel.labels[3]
    assert 40 not in sel.indices and sel.duplicate_of[41] == -1
    # The reference: greedy over each cluster in score order, against the records kept so far.
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = np.full(80, -1)
    for c in np.unique(sel.labels):
        kept = []
        for i in sorted(np.flatnonzero(sel.labels == c), key=lambda i: -scores[i]):
            sims = [float(unit[i] @ unit[j]) for j in kept]
            if sims and max(sims) >= 0.999:
                want[i] = kept[int(np.argmax(sims))]
            else:
                kept.append(i)
    assert sel.duplicate_of.tolist() == want.tolist()


@pytest.mark.parametrize("text,exact,near", [("none", False, None), ("exact", True, None), ("near:0.95", True, 0.95)])
def test_dedup_parse(text, exact, near):
    from car_onnx.core.selection import Dedup

    d = Dedup.parse(text)
    assert (d.exact, d.near, str(d)) == (exact, near, text)


@pytest.mark.parametrize("text", ["near", "near:0", "near:1.5", "fuzzy", "near:x"])
def test_dedup_parse_rejects(text):
    from car_onnx.core.selection import Dedup

    with pytest.raises(UsageError, match=rf"^dedup must be none, exact or near:T with 0 < T <= 1, got '{text}'$"):
        Dedup.parse(text)


@pytest.mark.parametrize("seed", range(6))
def test_streamed_selection_and_ranks_equal_the_whole_array_rule(seed, monkeypatch):
    """Sample mode selects a block at a time (a running top-k and a top-k per cluster): the same rows, in the same
    order, as select_ranked on the whole arrays, with ties, excluded rows, percentages and pruned buffers; the
    per-block work may come back in any order (car_onnx.ray maps it on the cluster)."""
    monkeypatch.setattr(selection, "BLOCK_ROWS", 3)  # buffers pruned all along
    rng = np.random.default_rng(seed)
    n, k = 4000, int(rng.integers(1, 60))
    scores = (rng.integers(0, 40, n) / 7).astype(np.float32) if seed % 2 else rng.random(n).astype(np.float32)
    labels = rng.integers(0, k, n)
    labels[rng.random(n) < 0.1] = -1  # duplicates: no part
    block = int(rng.integers(1, 700))

    def blocks():
        return ((a, scores[a : a + block], labels[a : a + block]) for a in range(0, n, block))

    ranked = np.flatnonzero(labels >= 0)
    for n1, n2 in ((0, "1"), (40, "1"), (40, "3"), (40, "10%"), (int(ranked.size), "2"), (7, "0")):
        want = select_ranked(scores, labels, n1, Size.parse(n2, "n2"))
        for over in (map, lambda fn, items: reversed([fn(item) for item in items])):
            got = select_streamed(blocks, n1, Size.parse(n2, "n2"), k, over)
            assert np.array_equal(got[0], want[0]) and got[1] == want[1], (n1, n2)
    rank = np.zeros(n, dtype=np.int64)  # place by score, ties by row
    rank[sorted(ranked, key=lambda i: (-float(scores[i]), i))] = np.arange(1, ranked.size + 1)
    rows = rng.choice(ranked, 300, replace=False)
    assert np.array_equal(ranks_streamed(blocks, rows, scores[rows]), rank[rows])
