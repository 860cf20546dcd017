"""Past one file and one machine's memory, without Ray: a directory or glob of shards read as one dataset, and
clustering from a sample (--cluster sample) with memory bounded by the sample."""

import json

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from car_onnx import car_select
from car_onnx.core.clustering import Clusterer
from car_onnx.core.selection import SelectOptions
from car_onnx.jobs.workdir import ChunkRows, WorkDir
from car_onnx_export import tiny


def records(n, seed=0):
    rng = np.random.default_rng(seed)
    words = np.array(tiny.WORDS)
    return [
        {
            "instruction": " ".join(rng.choice(words, 4)),
            "input": "" if i % 4 else " ".join(rng.choice(words, 2)),
            "output": " ".join(rng.choice(words, int(rng.integers(1, 9)))),
        }
        for i in range(n)
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny.make_bundle(tmp_path_factory.mktemp("scale") / "bundle")


def test_a_directory_or_glob_of_shards_is_one_dataset(bundle, tmp_path, cli):
    rows = records(300)
    write_jsonl(tmp_path / "all.jsonl", rows)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        write_jsonl(shards / f"part-{i}.jsonl", rows[i * 100 : (i + 1) * 100])
    (shards / "notes.txt").write_text("not a dataset file: ignored")
    args = ["-b", bundle, "--n1", "5%", "--all", "--chunk-records", "64"]
    assert cli("select", tmp_path / "all.jsonl", "-o", tmp_path / "one.jsonl", *args)[0] == 0
    assert cli("select", shards, "-o", tmp_path / "dir.jsonl", *args)[0] == 0
    assert cli("select", str(shards / "part-*.jsonl"), "-o", tmp_path / "glob.jsonl", *args)[0] == 0
    assert (tmp_path / "dir.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert (tmp_path / "glob.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()


def test_a_bad_record_is_named_by_its_shard_and_line(bundle, tmp_path, cli):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        rows = records(20, seed=i)
        if i == 2:
            rows[6]["output"] = 7
        write_jsonl(shards / f"part-{i}.jsonl", rows)
    code, _, err, _ = cli("select", shards, "-o", tmp_path / "o.jsonl", "-b", bundle, "--n1", "3")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"car-onnx: error: {shards / 'part-2.jsonl'}: line 7: field 'output': expected a string, got number"
    )
    assert not (tmp_path / "o.jsonl").exists()
    code, _, err, _ = cli("select", shards, "-o", tmp_path / "o.jsonl", "-b", bundle, "--n1", "3", "--on-error", "skip")
    assert code == 0, err
    rejects = [json.loads(line) for line in (tmp_path / "o.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [(r["where"], r["reason"]) for r in rejects] == [("part-2.jsonl line 7", "invalid")]


def test_sample_mode_fits_on_a_seeded_sample_and_assigns_every_row():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3000, 16)) + rng.integers(0, 6, 3000)[:, None] * 2.0).astype(np.float32)
    c = Clusterer(12, mode="sample", sample_size=800, seed=7)
    labels = c.fit_predict(x)
    # the reference: scikit-learn fitted on the same sample, predicting every row
    picked = np.sort(np.random.default_rng(7).choice(3000, 800, replace=False))
    pca = PCA(n_components=0.95, random_state=7).fit(x[picked])
    km = KMeans(n_clusters=12, n_init=10, random_state=7).fit(pca.transform(x[picked]))
    assert c.sampled_ and c.n_components_ == pca.n_components_
    assert np.array_equal(labels, km.predict(pca.transform(x)))
    # a subset of rows (duplicates left out) gets the labels those rows get as their own dataset
    rows = np.sort(rng.choice(3000, 2000, replace=False))
    assert np.array_equal(
        Clusterer(12, mode="sample", sample_size=800, seed=7).fit_predict(x, rows),
        Clusterer(12, mode="sample", sample_size=800, seed=7).fit_predict(x[rows]),
    )
    # below the sample size, and in auto mode below the limit, the exact path runs
    assert not Clusterer(12, mode="sample", sample_size=5000).sampled(3000)
    assert not Clusterer(12).sampled(3000)


def test_sample_mode_reads_scores_and_writes_labels_on_disk_a_block_at_a_time(tmp_path, monkeypatch):
    """The file job's sample mode: scores and labels in .npy files (workdir.Column), never whole in memory; the
    selection equals that of the same data in memory."""
    from car_onnx.core import rows, selection

    for module in (rows, selection):
        monkeypatch.setattr(module, "BLOCK_ROWS", 256)
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(3000, 16)) + rng.integers(0, 6, 3000)[:, None] * 2.0).astype(np.float32)
    scores = rng.random(3000).astype(np.float32)
    dup = np.full(3000, -1)
    dup[rng.choice(np.arange(1, 3000), 200, replace=False)] = 0  # duplicates of row 0
    work = WorkDir.open(tmp_path / "w", {"roles": ["score"]}, print)
    on_disk, labels = work.column("scores", 3000, "float32"), work.column("labels", 3000, "int64")
    on_disk[:] = scores
    options = dict(n1="3%", n2="10%", k=12, cluster="sample", sample_size=800, duplicate_of=dup)
    got, want = car_select(on_disk, x, labels=labels, **options), car_select(scores, x, **options)
    assert got.labels is labels and np.array_equal(labels[:], want.labels)
    assert np.array_equal(got.indices, want.indices) and got.n_top == want.n_top
    chosen = np.sort(want.indices)
    assert np.array_equal(got.ranks_of(chosen), want.ranks[chosen])
    assert labels[dup >= 0].tolist() == [int(labels[0])] * 200  # a duplicate has its original's cluster


def test_the_index_finds_each_records_first_copy_bucket_by_bucket(tmp_path, monkeypatch):
    from car_onnx.core import columns

    monkeypatch.setattr(columns, "BUCKETS", 5)
    rng = np.random.default_rng(2)
    pool = [rng.bytes(16) for _ in range(300)]
    keys = [pool[i] for i in rng.integers(0, 300, 2000)]
    index = columns.Index(tmp_path, dedup=True)
    for a, b in ((0, 1), (1, 700), (700, 700), (700, 2000)):  # added in pieces, in order
        index.add(np.arange(a, b) * 3 + 1, b"".join(keys[a:b]))
    places, duplicate_of, repeated = index.finish()
    first, want = {}, []
    for i, key in enumerate(keys):
        want.append(first[key] if key in first else -1)
        first.setdefault(key, i)
    assert duplicate_of[:].tolist() == want and repeated == sum(w >= 0 for w in want)
    assert places[:].tolist() == list(range(1, 6000, 3)) and places[[5, 1999]].tolist() == [16, 5998]


def test_scan_and_write_pass_read_their_per_record_facts_a_block_at_a_time(bundle, tmp_path, monkeypatch):
    """Places and duplicates are on disk (columns.Index) and read back a block at a time: with blocks of 7 rows
    and 3 key buckets, sample mode's output and rejects file are byte for byte those of one block."""
    from car_onnx import Model
    from car_onnx.core import columns, selection
    from car_onnx.core import rows as row_sources
    from car_onnx.jobs import pipeline, scanning, write

    rows = records(400, seed=8)
    rows += [dict(rows[i], output=rows[i]["output"] + "  ") for i in (3, 150, 399, 3)]  # copies, one twice
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate((rows[:150], rows[150:151], rows[151:])):
        write_jsonl(shards / f"part-{i}.jsonl", part)

    def run(name):
        pipeline.select(
            pipeline.Job(shards),
            Model(bundle),
            tmp_path / name,
            options=SelectOptions.parse(n1="4%", n2="2", cluster="sample", sample_size=100),
            write_all=True,
        )
        return (tmp_path / name).read_bytes(), (tmp_path / f"{name}.rejects.jsonl").read_bytes()

    whole = run("one.jsonl")
    for module in (row_sources, columns, write, scanning, selection):
        monkeypatch.setattr(module, "BLOCK_ROWS", 7)
    monkeypatch.setattr(columns, "BUCKETS", 3)
    assert run("blocks.jsonl") == whole
    rejects = [json.loads(line) for line in whole[1].decode().splitlines()]
    assert [(r["where"], r["duplicate_of"]) for r in rejects] == [
        ("part-2.jsonl line 250", "part-0.jsonl line 4"),
        ("part-2.jsonl line 251", "part-1.jsonl line 1"),
        ("part-2.jsonl line 252", "part-2.jsonl line 249"),
        ("part-2.jsonl line 253", "part-0.jsonl line 4"),
    ]


def test_chunk_rows_read_only_what_is_asked(tmp_path):
    work = WorkDir.open(tmp_path / "w", {"roles": ["score", "embed"]}, print)
    rng = np.random.default_rng(0)
    full = rng.normal(size=(1000, 8)).astype(np.float32)
    for c, start in enumerate(range(0, 1000, 300)):
        part = full[start : start + 300]
        work.save(c, {"score": part[:, 0].copy(), "embed": part})
    out = work.assemble(1000, in_chunks=True)
    rows = out["embed"]
    assert isinstance(rows, ChunkRows) and rows.shape == (1000, 8)
    assert not (tmp_path / "w" / "embeddings.npy").exists()
    picked = np.sort(rng.choice(1000, 77, replace=False))
    assert np.array_equal(rows[picked], full[picked])
    assert np.array_equal(np.concatenate([b for _, b in rows.blocks()]), full)
    assert np.array_equal(out["score"], full[:, 0])


def test_sample_mode_selection_through_the_cli_equals_car_select(bundle, tmp_path, cli, rows_of):
    rows = records(1200, seed=4)
    write_jsonl(tmp_path / "d.jsonl", rows)
    code, _, err, _ = cli(
        "select",
        tmp_path / "d.jsonl",
        "-o",
        tmp_path / "o.jsonl",
        "-b",
        bundle,
        "--n1",
        "2%",
        "--cluster",
        "sample",
        "--sample-size",
        "400",
        "--dedup",
        "none",
        "--all",
        "--chunk-records",
        "100",
    )
    assert code == 0, err
    texts = [tiny.TEMPLATE.render(r["instruction"], r["input"], r["output"]) for r in rows]
    scores, vectors = tiny.reference(texts)
    sel = car_select(scores, vectors, n1="2%", cluster="sample", sample_size=400)
    assert sel.sampled
    out = rows_of(tmp_path / "o.jsonl", "jsonl")
    assert [r["cluster"] for r in out] == sel.labels.tolist()
    assert sorted(i for i, r in enumerate(out) if r["selected"]) == sorted(sel.indices.tolist())


def test_sample_mode_options_are_checked_before_any_work(bundle, tmp_path, cli):
    write_jsonl(tmp_path / "d.jsonl", records(300))
    base = ("select", tmp_path / "d.jsonl", "-o", tmp_path / "o.jsonl", "-b", bundle)
    code, _, err, _ = cli(*base, "--cluster", "sample", "--sample-size", "50", "--k", "60")
    assert code == 2 and err.strip().endswith(
        "--k = 60 clusters cannot be fitted on a sample of 50 rows; raise --sample-size"
    )
    code, _, err, _ = cli(*base, "--cluster", "sample", "--sample-size", "50", "--dedup", "near:0.9")
    assert code == 2 and err.strip().endswith(
        "--dedup near:T compares records within each cluster in memory: it needs --cluster exact"
    )
    assert not (tmp_path / "o.jsonl").exists()


def test_parquet_output_of_shards_is_a_directory_of_shards(bundle, tmp_path, cli):
    pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow (the [parquet] extra)")
    rows = [{**r, "id": i} for i, r in enumerate(records(300, seed=9))]
    write_jsonl(tmp_path / "all.jsonl", rows)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        write_jsonl(shards / f"part-{i}.jsonl", rows[i * 100 : (i + 1) * 100])
    args = ["-b", bundle, "--n1", "5%", "--output-format", "parquet"]
    assert cli("select", tmp_path / "all.jsonl", "-o", tmp_path / "one.parquet", *args)[0] == 0
    code, _, err, _ = cli("select", shards, "-o", tmp_path / "out", *args)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "part-0.parquet",
        "part-1.parquet",
        "part-2.parquet",
    ]
    whole = pq.read_table(tmp_path / "one.parquet").to_pylist()
    for i in range(3):
        want = [r for r in whole if i * 100 <= r["id"] < (i + 1) * 100]  # the shard's rows, in selection order
        assert pq.read_table(tmp_path / "out" / f"part-{i}.parquet").to_pylist() == want
    # the directory is replaced only with --force, and whole
    code, _, err, _ = cli("select", shards, "-o", tmp_path / "out", *args)
    assert code == 2 and err.strip().endswith(f"{tmp_path / 'out'}: already exists; pass --force to replace it")
    assert cli("select", shards, "-o", tmp_path / "out", *args, "--force", "--n1", "3")[0] == 0
    assert sum(pq.read_metadata(p).num_rows for p in (tmp_path / "out").iterdir()) < len(whole)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
