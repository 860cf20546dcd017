"""Resumable jobs (SIGKILL and resume, byte for byte), stale work invalidated with a message, --on-error skip,
determinism across threads, batch sizes and chunk sizes; on a tiny bundle, through the real command."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from car_onnx_export import tiny


def select_cmd(data, out, *extra):
    code = "import sys; from car_onnx.cli import main; sys.argv = ['car-onnx', *sys.argv[1:]]; main()"
    return [
        sys.executable,
        "-c",
        code,
        "select",
        str(data.path),
        "-o",
        str(out),
        "-b",
        str(data.bundle),
        *data.args,
        *extra,
    ]


@pytest.mark.parametrize("kill_after", [1, 60, 120])  # chunks finished when killed (120: all, so clustering)
def test_sigkill_then_resume_gives_the_same_bytes(data, tmp_path, kill_after, cli):
    root, bundle, path = data
    work, out = tmp_path / "work", tmp_path / "out.jsonl"
    proc = subprocess.Popen(select_cmd(data, out, "--work-dir", work, "-q"), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((work / "chunks").glob("*.npz"))) < kill_after and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    finished = len(list((work / "chunks").glob("*.npz")))
    assert kill_after <= finished and not out.exists()

    rc, _, err, _ = cli("select", path, "-o", out, "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 0, err
    assert f"reused {finished} finished chunk(s)" in err
    assert out.read_bytes() == (root / "plain.jsonl").read_bytes()


def test_a_finished_work_dir_is_reused_whole_and_stale_parts_are_discarded(data, tmp_path, cli):
    root, bundle, path = data
    work = tmp_path / "work"
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "a.jsonl", "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 0 and "reused" not in err, err
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "b.jsonl", "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 0 and "reused 120 finished chunk(s)" in err, err
    assert (tmp_path / "b.jsonl").read_bytes() == (root / "plain.jsonl").read_bytes()

    # one damaged chunk is computed again
    chunk = work / "chunks" / "000007.npz"
    chunk.write_bytes(chunk.read_bytes()[:100])
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "c.jsonl", "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 0 and f"work dir {work}: chunk 7 unreadable" in err and "reused 119 finished" in err, err
    assert (tmp_path / "c.jsonl").read_bytes() == (root / "plain.jsonl").read_bytes()

    # another input: every chunk is discarded, and the message says why
    changed = tmp_path / "data.jsonl"
    changed.write_text(path.read_text().replace('"id": 3}', '"id": 3, "x": 1}'))
    rc, _, err, _ = cli("select", changed, "-o", tmp_path / "d.jsonl", "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 0 and "reused" not in err, err
    line = next(x for x in err.splitlines() if "since the last run" in x)
    assert line.split("car-onnx: ", 1)[1].startswith(f"work dir {work}: the input changed (sha256 ")
    assert line.endswith("since the last run; its 120 finished chunk(s) are discarded")

    # another bundle (other weights) and another option
    other = tiny.make_bundle(tmp_path / "other", seed=1)
    rc, _, err, _ = cli("select", changed, "-o", tmp_path / "e.jsonl", "-b", other, *data.args, "--work-dir", work)
    assert rc == 0 and "the bundle changed (sha256 " in err, err
    rc, _, err, _ = cli(
        "select", changed, "-o", tmp_path / "f.jsonl", "-b", other, *data.args, "--work-dir", work, "--max-tokens", "64"
    )
    assert rc == 0 and "option max_tokens changed (2048 -> 64)" in err, err


def test_work_dir_that_is_not_ours_is_refused(data, tmp_path, cli):
    _, bundle, path = data
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "o.jsonl", "-b", bundle, "--work-dir", tmp_path / "mine")
    assert rc == 2 and err == (
        f"car-onnx: error: {tmp_path / 'mine'}: --work-dir is not empty and holds no job.json "
        "(not a car-onnx work directory); choose a new or empty directory"
    )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me" and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    "options",
    [("--threads", "1"), ("--threads", "2", "--max-tokens", "40"), ("--max-tokens", "100000", "--chunk-records", "7")],
)
def test_same_selection_across_threads_batch_sizes_and_chunks(data, tmp_path, options, cli, rows_of):
    """The selection is identical; scores may differ in the last float bits (other summation orders)."""
    root, bundle, path = data
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "o.jsonl", "-b", bundle, "--n1", "40", "-q", *options)
    assert rc == 0, err
    got, want = rows_of(tmp_path / "o.jsonl", "jsonl"), rows_of(root / "plain.jsonl", "jsonl")
    assert [(r["id"], r["cluster"]) for r in got] == [(r["id"], r["cluster"]) for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=1e-6)


def test_int8_output_does_not_depend_on_batch_size(data, tmp_path, cli, rows_of):
    """Dynamically quantised int8 runs one text per batch: any --max-tokens gives the same bytes, another
    thread count the same selection."""
    _, _, path = data
    bundle = tiny.make_bundle(tmp_path / "int8", precisions=("int8",))
    outs = []
    for i, options in enumerate([(), ("--max-tokens", "100000"), ("--threads", "1")]):
        rc, _, err, _ = cli("select", path, "-o", tmp_path / f"{i}.jsonl", "-b", bundle, *data.args, "-q", *options)
        assert rc == 0, err
        outs.append(tmp_path / f"{i}.jsonl")
    assert outs[1].read_bytes() == outs[0].read_bytes()
    got, want = rows_of(outs[2], "jsonl"), rows_of(outs[0], "jsonl")
    assert [(r["id"], r["cluster"]) for r in got] == [(r["id"], r["cluster"]) for r in want]


def test_same_bytes_across_runs(data, tmp_path, cli):
    root, bundle, path = data
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "o.jsonl", "-b", bundle, *data.args, "-q")
    assert rc == 0, err
    assert (tmp_path / "o.jsonl").read_bytes() == (root / "plain.jsonl").read_bytes()


def test_plain_run_is_the_reference_selection(data, rows_of, expected_selection):
    root, _, path = data
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    want = expected_selection(rows, 40, 1)
    got = rows_of(root / "plain.jsonl", "jsonl")
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert [r["cluster"] for r in got] == [r["cluster"] for r in want]


# --- bad records: fail fast by default, or skip into a rejects file ---------------------------------------------

BAD_LINES = [
    '{"instruction": "explain water", "output": 3}',
    "not json",
    "",
    '{"instruction": "a", "output": "b", "score": 0.5}',
]


def with_bad_lines(tmp_path, data):
    good = [json.dumps(r) for r in data.records(30)]
    lines = good[:5] + BAD_LINES[:2] + good[5:20] + BAD_LINES[2:] + good[20:]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [json.loads(g) for g in good]


def test_default_fails_fast_with_no_output(data, tmp_path, cli):
    _, bundle, _ = data
    path, _ = with_bad_lines(tmp_path, data)
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "o.jsonl", "-b", bundle)
    assert (
        rc == 1
        and err.splitlines()[-1] == f"car-onnx: error: {path}: line 6: field 'output': expected a string, got number"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl"]


def test_skip_writes_rejects_and_counts_them(data, tmp_path, cli, rows_of, expected_selection):
    _, bundle, _ = data
    path, good = with_bad_lines(tmp_path, data)
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "o.jsonl", "-b", bundle, "--n1", "3", "--on-error", "skip")
    assert rc == 0, err
    rejects = tmp_path / "o.jsonl.rejects.jsonl"
    assert [json.loads(line) for line in rejects.read_text().splitlines()] == [
        {
            "where": "line 6",
            "reason": "invalid",
            "field": "output",
            "error": "expected a string, got number",
            "record": {"instruction": "explain water", "output": 3},
        },
        {
            "where": "line 7",
            "reason": "invalid",
            "field": None,
            "error": "invalid JSON: Expecting value",
            "record": "not json",
        },
        {"where": "line 23", "reason": "invalid", "field": None, "error": "empty line", "record": ""},
        {
            "where": "line 24",
            "reason": "invalid",
            "field": "score",
            "error": "already has a field 'score' that the output would overwrite (name the added field with score_field)",
            "record": {"instruction": "a", "output": "b", "score": 0.5},
        },
    ]
    assert f"car-onnx: 4 record(s) rejected, written to {rejects}" in err
    assert err.splitlines()[-1].startswith("car-onnx: 30 records; 4 rejected; ")
    got, want = rows_of(tmp_path / "o.jsonl", "jsonl"), expected_selection(good, 3, 1)
    assert [{**r, "score": 0} for r in got] == [{**r, "score": 0} for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=1e-6)


def test_skip_with_nothing_left_fails_and_writes_nothing(data, tmp_path, cli):
    _, bundle, _ = data
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD_LINES) + "\n")
    rc, _, err, _ = cli(
        "score", path, "-o", tmp_path / "o.jsonl", "-b", bundle, "--on-error", "skip", "--rejects", tmp_path / "r.jsonl"
    )
    assert rc == 1 and err.splitlines()[-1] == f"car-onnx: error: {path}: no records left: all 4 were rejected"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_skip_refuses_an_existing_rejects_file(data, tmp_path, cli):
    _, bundle, _ = data
    path, _ = with_bad_lines(tmp_path, data)
    (tmp_path / "r.jsonl").write_text("old")
    rc, _, err, _ = cli(
        "score", path, "-o", tmp_path / "o.jsonl", "-b", bundle, "--on-error", "skip", "--rejects", tmp_path / "r.jsonl"
    )
    assert rc == 2 and err == f"car-onnx: error: {tmp_path / 'r.jsonl'}: already exists; pass --force to replace it"
    rc, _, err, _ = cli("score", path, "-o", tmp_path / "o.jsonl", "-b", bundle, "--rejects", tmp_path / "x.jsonl")
    assert rc == 2 and err == (
        "car-onnx: error: --rejects goes with --on-error skip (or, for select, a --dedup other than none)"
    )


def test_input_changed_during_the_job_is_refused(data, tmp_path, monkeypatch):
    from car_onnx import InputError, Model
    from car_onnx.jobs import pipeline

    _, bundle, _ = data
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data.records(50)))
    real_scan = pipeline.scan

    def scan_then_edit(*args, **kw):
        found = real_scan(*args, **kw)
        with open(path, "a") as f:
            f.write(json.dumps(data.records(1)[0]) + "\n")
        return found

    monkeypatch.setattr(pipeline, "scan", scan_then_edit)
    job = pipeline.Job(path)
    with pytest.raises(InputError, match=f"^{path}: changed while the job was running; run it again$"):
        pipeline.score(job, Model(bundle, threads=1), tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()
    assert os.listdir(tmp_path) == ["d.jsonl"]
