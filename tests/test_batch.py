"""Batch-job behaviour of `car-onnx select` (issue 14): options checked before any model runs, the output format
from -o, reasons and ranks, sizes, added-field names, progress in logs, --show for chats, --version, duplicates,
streamed Parquet, re-selecting from a work dir without re-scoring, a quiet package build."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import car_onnx
from car_onnx.io.writers import open_writer
from car_onnx_export import tiny

ROOT = Path(__file__).resolve().parents[1]
WORDS = tiny.WORDS
RECORDS = [
    {
        "instruction": f"explain the {WORDS[i % 60]} of water",
        "input": "",
        "output": f"the {WORDS[i % 60]} is {WORDS[-1 - i % 37]} and {WORDS[i % 11]}",
        "id": i,
    }
    for i in range(60)
]


@pytest.fixture
def setup(tmp_path):
    bundle = tiny.make_bundle(tmp_path / "bundle")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return tmp_path, bundle, data


def tamper(bundle: Path) -> None:
    """Flip a byte of the graph: any model load now fails its sha256 check, so an option error seen instead
    proves the option was checked before a model was touched."""
    graph = bundle / "joint" / "model.fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 1
    graph.write_bytes(bytes(data))


def test_every_option_is_checked_before_any_model_runs(setup, cli):
    tmp, bundle, data = setup
    tamper(bundle)
    cases = [
        (
            ["-o", tmp / "o.xml"],
            2,
            f"car-onnx: error: {tmp / 'o.xml'}: cannot tell the output format from the suffix "
            "(accepted: .json, .jsonl, .ndjson, .csv, .parquet); name the output so or pass "
            "--output-format",
        ),
        (
            ["-o", tmp / "missing" / "o.json"],
            2,
            f"car-onnx: error: {tmp / 'missing' / 'o.json'}: the directory {tmp / 'missing'} does not exist",
        ),
        (
            ["-o", tmp / "o.json", "--n2", "x"],
            2,
            "car-onnx: error: --n2 must be a count >= 0 or a percentage like 2%, got 'x'",
        ),
        (
            ["-o", tmp / "o.json", "--dedup", "near:2"],
            2,
            "car-onnx: error: --dedup must be none, exact or near:T with 0 < T <= 1, got 'near:2'",
        ),
        (["-o", tmp / "o.json", "--k", "0"], 2, "car-onnx: error: --k must be an integer >= 1, got 0"),
        (
            ["-o", tmp / "o.json", "--pca-variance", "2"],
            2,
            "car-onnx: error: --pca-variance must be in (0, 1], got 2.0",
        ),
        (
            ["-o", tmp / "o.json", "--score-field", "rank"],
            2,
            "car-onnx: error: --score-field 'rank' is a field the output adds itself; choose another name",
        ),
    ]
    for args, code, message in cases:
        rc, _, err, _ = cli("select", data, "-b", bundle, *args)
        assert (rc, err) == (code, message)
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "o.json", "--output-format", "xml")
    assert rc == 2 and "Invalid value for '--output-format'" in err
    assert "'xml' is not one of 'json', 'jsonl', 'csv', 'parquet'" in err
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "o.json")  # no option error: the model is reached
    assert rc == 1 and "sha256 mismatch" in err
    assert sorted(p.name for p in tmp.iterdir()) == ["bundle", "data.jsonl"]


def test_parquet_without_pyarrow_fails_before_the_model(setup):
    tmp, bundle, data = setup
    tamper(bundle)
    code = (
        "import sys; sys.modules['pyarrow'] = None\nfrom car_onnx.cli import main\n"
        "sys.argv = ['car-onnx', *sys.argv[1:]]\nmain()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "select", str(data), "-b", str(bundle), "-o", str(tmp / "o.parquet")],
        capture_output=True,
        text=True,
    )
    assert (run.returncode, run.stderr.strip()) == (
        2,
        "car-onnx: error: Parquet needs pyarrow: pip install 'car-onnx[parquet]'",
    )


def test_output_format_follows_the_suffix(setup, cli, rows_of):
    tmp, bundle, data = setup
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "all.csv", "--all", "-q")
    assert rc == 0, err
    rows = rows_of(tmp / "all.csv", "csv")
    assert [r["id"] for r in rows] == [str(r["id"]) for r in RECORDS]
    assert (tmp / "all.csv").read_text().splitlines()[
        0
    ] == "instruction,input,output,id,score,cluster,rank,selected,reason"
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "sel.txt", "--output-format", "jsonl", "-q")
    assert rc == 0, err
    assert all(json.loads(line)["reason"] in ("top", "cluster") for line in (tmp / "sel.txt").read_text().splitlines())


def test_summary_splits_the_count_and_warns_about_sizes(setup, cli, rows_of):
    tmp, bundle, data = setup
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "o.jsonl", "--n1", "5")
    assert rc == 0, err
    rows = rows_of(tmp / "o.jsonl", "jsonl")
    top = [r for r in rows if r["reason"] == "top"]
    picks = [r for r in rows if r["reason"] == "cluster"]
    assert [r["rank"] for r in top] == [1, 2, 3, 4, 5] and rows == top + picks and picks
    summary = err.splitlines()[-1]
    assert re.fullmatch(
        rf"car-onnx: 60 records; {len(rows)} selected \(\d+\.\d\d%\) = 5 top \+ {len(picks)} cluster "
        r"picks of 5 clusters; wrote .*",
        summary,
    ), summary
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "p.jsonl", "--n1", "1000")
    assert rc == 0 and err.splitlines()[-1] == (
        "car-onnx: warning: n1 = 1000 is at or above the 60 records to rank: every record is selected"
    )
    assert len(rows_of(tmp / "p.jsonl", "jsonl")) == 60
    help_text = " ".join(cli("select", "--help")[1].split())
    assert "percentage of each cluster's size" in help_text and "At or above the number of records" in help_text


def test_score_and_cluster_field_names(setup, cli, rows_of):
    tmp, bundle, _ = setup
    scored = tmp / "scored.jsonl"  # like the paper's published selection: every record has a score already
    scored.write_text("".join(json.dumps({**r, "score": 0.5}) + "\n" for r in RECORDS))
    rc, _, err, _ = cli("select", scored, "-b", bundle, "-o", tmp / "o.jsonl", "-q")
    assert rc == 1 and err == (
        f"car-onnx: error: {scored}: line 1: field 'score': already has a field 'score' that "
        "the output would overwrite (name the added field with --score-field)"
    )
    rc, _, err, _ = cli(
        "select",
        scored,
        "-b",
        bundle,
        "-o",
        tmp / "o.jsonl",
        "--score-field",
        "car_score",
        "--cluster-field",
        "car_cluster",
        "--n1",
        "3",
        "-q",
    )
    assert rc == 0, err
    rows = rows_of(tmp / "o.jsonl", "jsonl")
    assert all(r["score"] == 0.5 and isinstance(r["car_score"], float) and "car_cluster" in r for r in rows)


def select_with_delay(delay: float, *args) -> tuple[int, str]:
    """`car-onnx select ARGS` in a subprocess whose progress delay is `delay` seconds: (exit code, stderr)."""
    code = (
        f"import sys, car_onnx.core.progress\ncar_onnx.core.progress.DELAY = {delay!r}\nfrom car_onnx.cli import main\n"
        "sys.argv = ['car-onnx', 'select', *sys.argv[1:]]\nmain()\n"
    )
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stderr


def test_progress_lines_reach_a_log_file(setup):
    """Each stage and clustering step that runs past the delay is told in a log file (here every step: delay 0)."""
    tmp, bundle, data = setup
    rc, err = select_with_delay(0, data, "-b", bundle, "-o", tmp / "o.jsonl", "--chunk-records", "6")
    assert rc == 0, err
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d car-onnx: "
    for stage in ("read", "score\\+embed", "cluster\\+select", "write"):
        assert re.search(rf"^{stamp}{stage}: started", err, re.M), err
        assert re.search(rf"^{stamp}{stage}: done in \d+s$", err, re.M), err
    assert re.search(rf"^{stamp}score\+embed: started \(60 records\)$", err, re.M), err
    assert re.search(
        rf"^{stamp}PCA of 60 x 8 embeddings \.\.\.\n{stamp}PCA kept \d+ components \([\d.]+% of the "
        r"variance\)",
        err,
        re.M,
    ), err
    assert re.search(
        rf"^{stamp}KMeans k=5 on 60 rows: run 10/10 of its initialisations, [\d.]+ runs/s, ETA 0s$", err, re.M
    ), err
    assert re.search(rf"^{stamp}KMeans done in [\d.]+s$", err, re.M), err


def test_short_steps_say_nothing(setup):
    """Steps that end within the delay (here: a delay none can reach, so that the test does not hang on the
    machine's speed) say nothing: stderr holds the summary alone (the issue: ten KMeans lines for a 0.1 s step)."""
    tmp, bundle, data = setup
    for i, extra in enumerate(([], ["--cluster", "sample", "--sample-size", "30"])):
        rc, err = select_with_delay(1e9, data, "-b", bundle, "-o", tmp / f"{i}.jsonl", "--n1", "5", *extra)
        assert rc == 0 and len(err.splitlines()) == 1 and err.startswith("car-onnx: 60 records; "), err


def test_log_lines_every_tenth_or_thirty_seconds(capsys):
    """A stage's lines in a log: one per 10% (at most one a second), else one every 30 s, with rate and ETA."""
    from car_onnx import cli

    now = [0.0]
    stages = cli.CliStages(quiet=False, clock=lambda: now[0])
    stages.tty = False
    with stages.stage("score+embed", total=1000) as advance:
        for _ in range(20):
            now[0] += 3
            advance(50)
    lines = [line.split("car-onnx: ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert lines[0] == "score+embed: started (1,000 records)" and lines[-1] == "score+embed: done in 1m00s"
    assert lines[1] == "score+embed: 100/1,000 (10%), 16.7/s, ETA 54s"  # 100 records in 6 s
    assert [line.split(" ")[1] for line in lines[1:-1]] == [f"{100 * i:,}/1,000" for i in range(1, 11)]
    with stages.stage("write", total=None) as advance:  # no total: a line every 30 s
        for _ in range(40):
            now[0] += 2
            advance(1)
    lines = [line.split("car-onnx: ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert [line.split(",")[0] for line in lines[1:-1]] == ["write: 15", "write: 30"]


def test_a_stage_is_told_only_once_it_has_run_the_delay(capsys):
    """A stage that ends within progress.DELAY writes nothing, as a bar or as lines; one that runs past it writes
    what it wrote before pacing (a bar, or its opening, progress and closing lines). The clock is injected."""
    from car_onnx import cli
    from car_onnx.core.progress import DELAY

    now = [0.0]
    for tty in (False, True):
        stages = cli.CliStages(quiet=False, clock=lambda: now[0])
        stages.tty = tty
        with stages.stage("score+embed", total=1000) as advance:
            for _ in range(10):
                now[0] += DELAY / 20
                advance(100)
        assert capsys.readouterr().err == ""
        with stages.stage("score+embed", total=1000) as advance:
            for _ in range(10):
                now[0] += DELAY / 4
                advance(100)
        err = capsys.readouterr().err
        if tty:  # rich draws the bar (a plain final frame when stderr is not a terminal)
            assert re.search(r"score\+embed .* 1000/1000", err), err
        else:
            said = [line.split("car-onnx: ", 1)[1] for line in err.splitlines()]
            assert said[0] == "score+embed: started (1,000 records)" and said[-1] == "score+embed: done in 5s"
            # due at 2 s (400 records), then a line per 10% at most one a second
            assert [line.split(" ")[1] for line in said[1:-1]] == ["400/1,000", "600/1,000", "800/1,000", "1,000/1,000"]


def test_a_step_holds_its_opening_and_drops_early_lines():
    from car_onnx.core.progress import Step

    now, said = [0.0], []
    step = Step(said.append, "PCA of 60 x 8 embeddings ...", delay=2, clock=lambda: now[0])
    step.line("early")
    now[0] = 1.9
    assert step.close("PCA kept 5 components") is False and said == []  # ended within the delay: nothing

    step = Step(said.append, "KMeans ...", delay=2, clock=lambda: now[0])
    for t, text in ((1, "run 1/10"), (2.5, "run 2/10"), (4, "run 3/10")):
        now[0] += t
        step.line(text)
    assert step.close("KMeans done") is True
    assert said == ["KMeans ...", "run 2/10", "run 3/10", "KMeans done"]  # the opening once due, then each line

    said.clear()
    step = Step(said.append, "PCA ...", delay=2, clock=lambda: now[0])
    now[0] += 30
    step.close("PCA kept 5 components in 30.0s")  # a long step with no lines between: opening and closing
    assert said == ["PCA ...", "PCA kept 5 components in 30.0s"]
    assert Step(None, "x", delay=0).close("y") is False


def test_show_prints_conversation_texts(setup, cli):
    tmp, bundle, _ = setup
    chats = tmp / "chats.jsonl"
    chats.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": r["instruction"]},
                        {"role": "assistant", "content": r["output"]},
                    ]
                }
            )
            + "\n"
            for r in RECORDS[:10]
        )
    )
    rc, out, err, _ = cli("select", chats, "-b", bundle, "-o", tmp / "o.jsonl", "--n1", "2", "--show", "-q")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["#", "score", "cluster", "reason", "instruction", "->", "output"]
    assert re.fullmatch(
        r"\s+1\s+-?\d\.\d{4}\s+\d+\s+top\s+explain the \w+ of water -> the \w+ is \w+ and \w+", lines[1]
    )


def test_version_option(cli):
    rc, out, _, _ = cli("--version")
    assert (rc, out.strip()) == (0, car_onnx.__version__)


def test_exact_duplicates_are_dropped_and_rejected_with_their_original(setup, cli, rows_of, expected_selection):
    tmp, bundle, _ = setup
    rows = RECORDS[:30] + [
        {**RECORDS[4], "id": 100},
        {**RECORDS[7], "output": "  " + RECORDS[7]["output"].replace(" ", "\n "), "id": 101},
    ]
    data = tmp / "dups.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "o.jsonl", "--n1", "40", "--n2", "1")
    assert rc == 0, err
    got, want = rows_of(tmp / "o.jsonl", "jsonl"), expected_selection(rows, 40, 1)
    assert sorted(r["id"] for r in got) == list(range(30))  # everything but the two copies
    assert [{**r, "score": 0} for r in got] == [{**r, "score": 0} for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-6)
    rejects = [json.loads(line) for line in (tmp / "o.jsonl.rejects.jsonl").read_text().splitlines()]
    assert rejects == [
        {"where": "line 31", "reason": "duplicate_of", "duplicate_of": "line 5", "kind": "exact", "record": rows[30]},
        {"where": "line 32", "reason": "duplicate_of", "duplicate_of": "line 8", "kind": "exact", "record": rows[31]},
    ]
    assert "; 2 duplicates dropped; " in err.splitlines()[-2]
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "n.jsonl", "--n1", "40", "--dedup", "none", "-q")
    assert rc == 0 and len(rows_of(tmp / "n.jsonl", "jsonl")) == 32  # the paper's behaviour keeps both
    assert not (tmp / "n.jsonl.rejects.jsonl").exists()


def test_near_duplicates_within_a_cluster(setup, cli, rows_of):
    tmp, bundle, _ = setup
    # The tiny model's embedding is the mean of its token vectors: the same words in another order have cosine 1.
    shuffled = {**RECORDS[3], "instruction": " ".join(reversed(RECORDS[3]["instruction"].split())), "id": 200}
    data = tmp / "near.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:30] + [shuffled]))
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "o.jsonl", "--all", "--dedup", "near:0.9999", "-q")
    assert rc == 0, err
    rows = {r["id"]: r for r in rows_of(tmp / "o.jsonl", "jsonl")}
    copy, original = rows[200], rows[3]
    dropped = copy if copy["score"] <= original["score"] else original
    assert dropped["rank"] is None and dropped["selected"] is False and dropped["cluster"] == rows[3]["cluster"]
    (reject,) = [json.loads(line) for line in (tmp / "o.jsonl.rejects.jsonl").read_text().splitlines()]
    assert reject["kind"] == "near" and reject["record"]["id"] == dropped["id"]


def test_parquet_output_streams_by_row_group(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    import car_onnx.io.writers as writers

    monkeypatch.setattr(writers, "PARQUET_ROWS", 4)
    rows = [{"instruction": f"q{i}", "output": "a", "n": i if i % 5 else None} for i in range(10)]
    rows += [{"instruction": "late", "output": "b", "extra": "only here", "n": 2.5}]
    with open_writer(tmp_path / "o.parquet", "parquet") as w:
        for r in rows:
            w.write(r)
    meta = pq.ParquetFile(str(tmp_path / "o.parquet")).metadata
    assert meta.num_row_groups == 3 and meta.num_rows == 11
    table = pq.read_table(str(tmp_path / "o.parquet"))
    assert table.column_names == ["instruction", "output", "n", "extra"]
    assert table.to_pylist() == [
        {**{"extra": None}, **r} | {"n": None if r["n"] is None else float(r["n"])} for r in rows
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet"]  # no part files left


def test_reselecting_from_a_work_dir_reuses_every_chunk(setup, cli, rows_of):
    tmp, bundle, data = setup
    work = tmp / "work"
    rc, _, err, _ = cli(
        "select", data, "-b", bundle, "-o", tmp / "a.jsonl", "--work-dir", work, "--chunk-records", "10"
    )
    assert rc == 0 and "reused" not in err, err
    options = ["--n1", "3", "--n2", "2", "--k", "4", "--dedup", "none"]
    rc, _, err, _ = cli(
        "select", data, "-b", bundle, "-o", tmp / "b.jsonl", "--work-dir", work, "--chunk-records", "10", *options
    )
    assert rc == 0 and "reused 6 finished chunk(s)" in err, err
    rc, _, err, _ = cli("select", data, "-b", bundle, "-o", tmp / "c.jsonl", "--chunk-records", "10", *options, "-q")
    assert rc == 0, err
    assert (tmp / "b.jsonl").read_bytes() == (tmp / "c.jsonl").read_bytes()


@pytest.mark.slow
def test_package_builds_without_warnings(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "BuildBackendWarning" not in run.stderr and "deprecated" not in run.stderr, run.stderr
