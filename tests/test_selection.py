"""car_select against an independent reimplementation of the reference's loop and clustering."""

import math

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from car_onnx import UsageError, car_select
from car_onnx.clustering import Clusterer
from car_onnx.selection import Size, select_ranked


def reference_select(scores, labels, n1, n2):
    """The reference: top n1 by score, then each cluster's top n2 (cluster ids ascending) not yet taken."""
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable: ties keep input order
    chosen = ranked[:n1]
    for cluster in sorted(set(labels.tolist())):
        for i in [i for i in ranked if labels[i] == cluster][:n2]:
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


@pytest.mark.parametrize("value,n,expected", [("1000", 52002, 1000), ("2%", 52002, 1040), ("0", 10, 0),
                                              ("100%", 7, 7), ("5000", 10, 10), (3, 10, 3), ("1.5%", 200, 3)])
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
    idx, n_top = select_ranked(scores, labels, 2, 1)
    assert idx.tolist() == [1, 2, 4] and n_top == 2
