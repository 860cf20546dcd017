"""car-onnx on Ray: a 2-node cluster of 1 CPU each, started on this machine by the tests and stopped after them.
The --ray output must equal the single-process output byte for byte; a killed worker or driver loses nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs the [ray] extra: pip install 'car-onnx[ray]'")
psutil = pytest.importorskip("psutil", reason="needs psutil (the [dev] extra) to find Ray's worker processes")

from car_onnx import Model  # noqa: E402
from car_onnx.core import rows as row_sources  # noqa: E402
from car_onnx.core.selection import SelectOptions  # noqa: E402
from car_onnx_export import tiny  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c.address
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """2,000 records of the tiny bundle's words, about one word in six one it does not know (its coverage warning),
    as JSONL and as 4 Parquet shards, and a tiny bundle; needs nothing beside the repository."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("ray")
    rng = np.random.default_rng(0)
    known = len(tiny.WORDS)

    def text(low: int, high: int) -> str:
        ids = rng.integers(0, known + 20, int(rng.integers(low, high)))
        return " ".join(tiny.WORDS[k] if k < known else f"w{k}" for k in ids)

    rows = [{"id": i, "instruction": text(3, 12), "input": "", "output": text(5, 40)} for i in range(2000)]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "shards").mkdir()
    for i in range(4):
        pq.write_table(pa.Table.from_pylist(rows[i * 500 : (i + 1) * 500]), root / "shards" / f"part-{i}.parquet")
    return root, rows, tiny.make_bundle(root / "bundle")


def test_whole_records_on_ray_equal_the_single_process_output(cluster, cli, tmp_path):
    """Conversations (every exchange read) and long answers (read in windows) under --ray: the same bytes as the
    local job, with every turn and with --turns first; needs nothing beside the repository."""
    bundle = tiny.make_bundle(tmp_path / "bundle", max_windows=8)
    w = tiny.WORDS
    rows = []
    for i in range(240):
        answer = " ".join(w[(i * j) % 60] for j in range(1, 3 + i % 5))
        if i % 3 == 0:  # a conversation of two or three exchanges
            turns = [("user", w[i % 50]), ("assistant", answer), ("user", w[(i + 9) % 50]), ("assistant", w[i % 60])]
            turns += [("user", w[(i + 3) % 50]), ("assistant", answer[::-1])] if i % 2 else []
            rows.append({"id": i, "messages": [{"role": r, "content": c} for r, c in turns]})
        elif i % 3 == 1:  # an answer longer than one window
            rows.append(
                {"id": i, "instruction": w[i % 50], "output": " ".join(w[(i + k) % 60] for k in range(9 + i % 20))}
            )
        else:
            rows.append({"id": i, "instruction": w[i % 50], "output": answer})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for turns in ("all", "first"):
        args = ("-b", bundle, "--n1", "5%", "--n2", "1", "--turns", turns, "--all", "--chunk-records", "40")
        code, _, err, _ = cli("select", data, "-o", tmp_path / f"local-{turns}.jsonl", *args)
        assert code == 0, err
        code, _, err, _ = cli("select", data, "-o", tmp_path / f"ray-{turns}.jsonl", *args, "--ray", cluster)
        assert code == 0, err
        assert (tmp_path / f"ray-{turns}.jsonl").read_bytes() == (tmp_path / f"local-{turns}.jsonl").read_bytes()
    scores = [[json.loads(line)["score"] for line in (tmp_path / f"ray-{t}.jsonl").open()] for t in ("all", "first")]
    assert scores[0] != scores[1]  # the later exchanges and windows were read


def warning(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("car-onnx: warning: model"))


def test_exact_mode_equals_the_single_process_output(real, cluster, cli, tmp_path):
    root, _, bundle = real
    args = ("-b", bundle, "--n1", "2%", "--n2", "1")
    code, _, local_err, _ = cli("select", root / "d.jsonl", "-o", tmp_path / "local.jsonl", *args)
    assert code == 0, local_err
    for source in (root / "d.jsonl", root / "shards"):
        out = tmp_path / f"ray-{source.name}.jsonl"
        code, _, err, _ = cli("select", source, "-o", out, *args, "--ray", cluster, "--chunk-records", "250")
        assert code == 0, err
        assert "on 2 actor(s) of 1 CPU(s)" in err  # both nodes worked
        assert out.read_bytes() == (tmp_path / "local.jsonl").read_bytes(), source
        # the unknown-token warning counts every chunk, as locally (its share: the words the bundle does not know)
        assert warning(err) == warning(local_err) and "maps 1" in warning(local_err)


def test_sample_mode_against_exact(real, cluster, cli, tmp_path, capsys):
    root, _, bundle = real
    args = ("-b", bundle, "--n1", "2%", "--n2", "1", "--chunk-records", "250")
    runs = {}
    for name, extra in (
        ("exact", ()),
        ("sample", ("--cluster", "sample", "--sample-size", "500")),
        ("sample-ray", ("--cluster", "sample", "--sample-size", "500", "--ray", cluster)),
    ):
        runs[name] = tmp_path / f"{name}.jsonl"
        code, _, err, _ = cli("select", root / "d.jsonl", "-o", runs[name], *args, *extra)
        assert code == 0, err
    assert "Ray: assigning 2,000 rows to clusters on 2 actor(s)" in err  # not on the driver
    assert "Ray: choosing the n1 block and each cluster's picks a block of rows at a time, in tasks" in err
    assert runs["sample-ray"].read_bytes() == runs["sample"].read_bytes()  # sample mode is deterministic too
    exact = [json.loads(line) for line in runs["exact"].read_text().splitlines()]
    sample = [json.loads(line) for line in runs["sample"].read_text().splitlines()]
    top = [r["rank"] for r in exact if r["reason"] == "top"]
    assert top == [r["rank"] for r in sample if r["reason"] == "top"]  # the n1 block does not depend on clusters
    both = {r["rank"] for r in exact} & {r["rank"] for r in sample}
    picks = {r["rank"] for r in exact if r["reason"] == "cluster"}
    with capsys.disabled():
        print(
            f"\n[ray sample vs exact, 2,000 records, sample 500] selected: exact {len(exact)}, sample {len(sample)}, "
            f"shared {len(both)} ({len(both) / len(exact):.1%}); cluster picks shared "
            f"{len(both & picks)} of {len(picks)}"
        )
    assert len(both) / len(exact) > 0.5


def workers():
    return [p for p in psutil.process_iter(["cmdline"]) if "_Chunks" in " ".join(p.info["cmdline"] or [])]


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "car_onnx", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def chunks_done(work: Path) -> int:
    return len(list((work / "chunks").glob("*.npz"))) if (work / "chunks").is_dir() else 0


@pytest.fixture(scope="module")
def big(real, tmp_path_factory, cli):
    """20,000 records (the real ones ten times, numbered) in 40 chunks, and their single-process selection."""
    root, rows, bundle = real
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    path.write_text("".join(json.dumps({**r, "copy": c}) + "\n" for c in range(10) for r in rows))
    args = ("-b", bundle, "--n1", "2%", "--dedup", "none", "--chunk-records", "500")
    code, _, err, _ = cli("select", path, "-o", path.with_name("local.jsonl"), *args)
    assert code == 0, err
    return path, args, path.with_name("local.jsonl").read_bytes()


def wait_for(condition, process, seconds=300):
    end = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_a_worker_killed_mid_run_leaves_the_output_unchanged(big, cluster, tmp_path):
    path, args, expected = big
    work, out = tmp_path / "work", tmp_path / "o.jsonl"
    p = start("select", path, "-o", out, *args, "--ray", cluster, "--work-dir", work)
    wait_for(lambda: chunks_done(work) >= 2 and workers(), p)
    victims = workers()
    os.kill(victims[0].pid, signal.SIGKILL)
    killed_at = chunks_done(work)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert killed_at < 40, "the job ended before the kill"
    assert out.read_bytes() == expected


def test_a_resumed_run_after_the_driver_was_killed_reruns_only_what_was_missing(big, cluster, tmp_path):
    path, args, expected = big
    work, out = tmp_path / "work", tmp_path / "o.jsonl"
    p = start("select", path, "-o", out, *args, "--ray", cluster, "--work-dir", work)
    wait_for(lambda: chunks_done(work) >= 5, p)
    p.kill()
    p.wait()
    finished = chunks_done(work)
    assert 5 <= finished < 40 and not out.exists()
    p = start("select", path, "-o", out, *args, "--ray", cluster, "--work-dir", work)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert f"{finished} of 40 chunk(s) already finished" in err
    assert f"Ray: {40 - finished} chunk(s) on" in err
    assert out.read_bytes() == expected


def test_an_actor_reads_a_file_once_while_its_chunks_come_in_order(real, monkeypatch):
    from car_onnx.jobs import pipeline, scanning
    from car_onnx.ray import _Chunks
    from car_onnx.runtime.manifest import sha256_file

    root, _, bundle = real
    job, model, roles = pipeline.Job(root / "d.jsonl", chunk_records=100), Model(bundle, threads=1), ("score", "embed")
    found = pipeline.scan(job, model, (), None, pipeline.Stages())
    records = list(scanning.shard_records(job, model, found.stamp[0], (), 0))
    opened, shard_records = [], scanning.shard_records
    monkeypatch.setattr(scanning, "shard_records", lambda *args: opened.append(args[-1]) or shard_records(*args))
    actor = _Chunks(model, job, (), roles, found.stamp, sha256_file(bundle / "manifest.json"))
    for c in (0, 2, 5, 6, 19, 3, 4):  # in order, then back to an earlier chunk: the file is read again
        shard, start, size = found.plan[c]
        out = actor(
            {"chunk": np.array([c]), "shard": np.array([shard]), "start": np.array([start]), "size": np.array([size])}
        )
        want = model.run(records[start : start + size], roles)
        assert np.array_equal(out["score"], want["score"]) and np.array_equal(out["embed"], want["embed"])
    assert opened == [0, 0]


def test_a_files_scan_task_streams_its_places_keys_and_rejects_a_block_at_a_time(real, tmp_path, monkeypatch):
    """The --ray scan task of one file yields each block of records' places and text keys, with the records
    rejected since the block before, so the driver never holds a whole file's scan."""
    from car_onnx.api import text_key
    from car_onnx.jobs import pipeline, scanning
    from car_onnx.ray import _scan_shard

    root, rows, bundle = real
    monkeypatch.setattr(scanning, "BLOCK_ROWS", 7)
    part = [dict(r) for r in rows[:30]]
    for line in (5, 18):
        part[line - 1]["output"] = 3
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    model = Model(bundle)
    got = list(_scan_shard(pipeline.Job(tmp_path / "d.jsonl"), 0, model, (), True, True))
    assert [[err.where for err, _ in bad] for _, bad in got] == [["line 5"], [], ["line 18"], [], []]
    blocks, (last, _) = [item for item, _ in got[:-1]], got[-1]
    lines = [n for n in range(1, 31) if n not in (5, 18)]
    assert [b[0].tolist() for b in blocks] == [lines[:7], lines[7:14], lines[14:21], lines[21:]]
    assert b"".join(b[1] for b in blocks) == b"".join(
        text_key(model.text(r["instruction"], r.get("input", ""), r["output"])) for r in part if r["output"] != 3
    )
    assert (last.records, last.rejected) == (28, 2)


def test_a_bad_record_in_shard_3_is_named_by_shard_and_line(real, cluster, cli, tmp_path):
    root, rows, bundle = real
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(5):
        part = [dict(r) for r in rows[i * 100 : (i + 1) * 100]]
        if i == 3:
            part[41]["output"] = ["not", "a", "string"]
        (shards / f"part-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    code, _, err, _ = cli("select", shards, "-o", tmp_path / "o.jsonl", "-b", bundle, "--ray", cluster)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"car-onnx: error: {shards / 'part-3.jsonl'}: line 42: field 'output': expected a string, got array"
    )
    assert not (tmp_path / "o.jsonl").exists()


def test_past_max_blocks_chunks_share_ray_blocks_and_the_output_is_unchanged(real, cluster, tmp_path, monkeypatch):
    """Past MAX_BLOCKS chunks, consecutive chunks share a Ray block (each still its own batch, saved as it comes
    back): the output is the single-process one, byte for byte."""
    from car_onnx import ray as car_ray
    from car_onnx.jobs import pipeline

    root, _, bundle = real
    monkeypatch.setattr(car_ray, "MAX_BLOCKS", 3)
    stages, notes = pipeline.Stages(), []
    stages.note = notes.append
    job = pipeline.Job(root / "d.jsonl", chunk_records=100)
    try:  # this process is the driver
        pipeline.select(
            job,
            Model(bundle),
            tmp_path / "ray.jsonl",
            options=SelectOptions.parse(n1="2%"),
            stages=stages,
            engine=car_ray.RayEngine(cluster),
        )
    finally:
        ray.shutdown()
    pipeline.select(job, Model(bundle, threads=1), tmp_path / "local.jsonl", options=SelectOptions.parse(n1="2%"))
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert "Ray: 20 chunk(s) on 2 actor(s) of 1 CPU(s), 3 Ray blocks of consecutive chunks" in notes


def test_python_api_on_a_ray_dataset_equals_model_select(real, cluster, monkeypatch):
    from car_onnx import ray as car_ray

    root, rows, bundle = real
    ray.init(address=cluster, logging_level="WARNING", log_to_driver=False)
    ds = ray.data.from_items(rows[:600], override_num_blocks=6)
    scored = car_ray.score_embed(ds, bundle=bundle).take_all()
    model = Model(bundle, threads=1)
    scores, vectors = model.score_embed(rows[:600])
    by_text = {(r["instruction"], r["output"]): r for r in scored}
    got = [by_text[r["instruction"], r["output"]] for r in rows[:600]]
    assert np.array_equal(np.array([r["score"] for r in got], dtype=np.float32), scores)
    assert np.array_equal(np.stack([r["embedding"] for r in got]), vectors)
    sel = car_ray.select(ds, bundle=bundle, n1="2%")
    want = model.select(rows[:600], n1="2%")
    assert np.array_equal(sel.indices, want.indices) and np.array_equal(sel.labels, want.labels)
    monkeypatch.setattr(row_sources.Rows, "assign", None)  # sample mode: every row assigned on the cluster
    mapped, tasks = [], car_ray._tasks  # and the selection's per-block work done in Ray tasks
    monkeypatch.setattr(car_ray, "_tasks", lambda fn, items: mapped.append(fn.func.__name__) or tasks(fn, items))
    sel = car_ray.select(ds, bundle=bundle, n1="2%", cluster="sample", sample_size=200)
    monkeypatch.undo()
    assert mapped == ["_sizes", "_candidates"]
    want = model.select(rows[:600], n1="2%", cluster="sample", sample_size=200)
    assert sel.sampled and want.sampled
    assert np.array_equal(sel.indices, want.indices) and np.array_equal(sel.labels, want.labels)
