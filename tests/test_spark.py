"""car_onnx.spark on pyspark's local mode: the same scores, embeddings and selection as the single process."""

import csv
import io
import json
import os
import shutil
import socket
import sys

import numpy as np
import pytest

import car_onnx
from car_onnx_export import tiny

pytest.importorskip("pyspark", reason="pyspark is not installed (the [spark] extra)")
if shutil.which("java") is None:
    pytest.skip("Spark needs a Java runtime (apt-get install default-jre-headless)", allow_module_level=True)

W = tiny.WORDS
ROWS = [
    {
        "id": i,
        "instruction": f"{W[i % 50]} {W[(i * 7) % 60]}",
        "input": "",
        "output": " ".join(W[(i * j) % 60] for j in range(1, 2 + i % 9)),
    }
    for i in range(240)
]
ROWS[17] = dict(ROWS[5], id=17)  # an exact duplicate


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers run this interpreter (it has car-onnx)
    session = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny.make_bundle(tmp_path_factory.mktemp("spark") / "bundle")


def frame(spark, rows, partitions=3):
    """A DataFrame of `rows` in their order, in several partitions."""
    tuples = [(r["id"], r["instruction"], r["input"], r["output"]) for r in rows]
    schema = "id long, instruction string, input string, output string"
    return spark.createDataFrame(spark.sparkContext.parallelize(tuples, partitions), schema)


def test_score_embed_matches_the_single_process(spark, bundle):
    from car_onnx import spark as car_spark

    df = frame(spark, ROWS)
    got = car_spark.score_embed(df, bundle=bundle, precision="fp32").toPandas().sort_values("id")
    model = car_onnx.load(bundle, precision="fp32")
    want = model.score_embed([ROWS[i] for i in got["id"]])
    np.testing.assert_allclose(got["score"].to_numpy(), want[0], atol=1e-6)
    np.testing.assert_allclose(np.stack(got["embedding"].to_numpy()), want[1], atol=1e-6)


@pytest.mark.parametrize("cluster", ["exact", "sample"])
def test_select_is_model_select_of_the_same_rows(spark, bundle, cluster, monkeypatch):
    from car_onnx import spark as car_spark

    mapped, spark_map = [], car_spark._SparkRows.map  # in sample mode, the per-block work runs in Spark tasks
    monkeypatch.setattr(
        car_spark._SparkRows,
        "map",
        lambda self, fn, items: mapped.append(fn.func.__name__) or spark_map(self, fn, items),
    )
    df = frame(spark, ROWS)
    order = [r["id"] for r in df.select("id").collect()]  # the DataFrame's row order, which select numbers
    assert order == [r["id"] for r in ROWS]
    options = dict(n1="5%", n2=2, cluster=cluster, sample_size=120)
    # one text per batch on both sides (max_tokens=1): the same bits whatever batches Spark makes
    got = car_spark.select(df, bundle=bundle, precision="fp32", max_tokens=1, **options).toPandas()
    rows = [ROWS[i] for i in order]
    sel = car_onnx.load(bundle, precision="fp32", max_tokens=1).select(rows, **options)
    assert got["id"].tolist() == [rows[i]["id"] for i in sel.indices]
    assert got["reason"].tolist() == sel.reasons.tolist()
    assert got["cluster"].tolist() == sel.labels[sel.indices].tolist()
    assert got["rank"].tolist() == sel.ranks[sel.indices].tolist()
    np.testing.assert_allclose(got["score"].to_numpy(), sel.scores[sel.indices], atol=1e-6)
    assert sel.duplicate_of[order.index(17)] == order.index(5) or sel.duplicate_of[order.index(5)] == order.index(17)
    assert mapped == (["_sizes", "_candidates"] if cluster == "sample" else [])


def test_a_bad_record_fails_naming_its_row_and_field(spark, bundle):
    from car_onnx import spark as car_spark

    rows = [dict(r) for r in ROWS[:20]]
    rows[6]["output"] = None
    df = frame(spark, rows)
    with pytest.raises(car_onnx.InputError, match=r"^DataFrame: row 6: field 'output': expected a string, got null$"):
        car_spark.select(df, bundle=bundle)


@pytest.mark.parametrize("cluster", ["exact", "sample"])
def test_skip_selects_among_the_good_rows_and_returns_the_bad_ones(spark, bundle, cluster):
    from car_onnx import spark as car_spark

    rows = [dict(r) for r in ROWS[:120]]
    rows[6]["output"], rows[40]["instruction"] = None, None
    df = frame(spark, rows)
    options = dict(n1=4, n2=1, cluster=cluster, sample_size=60)
    selected, rejected = car_spark.select(df, bundle=bundle, precision="fp32", max_tokens=1, on_error="skip", **options)
    good = [r for i, r in enumerate(rows) if i not in (6, 40)]
    sel = car_onnx.load(bundle, precision="fp32", max_tokens=1).select(good, **options)
    got = selected.toPandas()
    assert got["id"].tolist() == [good[i]["id"] for i in sel.indices]
    assert got["cluster"].tolist() == sel.labels[sel.indices].tolist()
    bad = rejected.toPandas()
    assert bad.columns.tolist() == ["id", "instruction", "input", "output", "field", "error"]
    assert bad["id"].tolist() == [6, 40] and bad["field"].tolist() == ["output", "instruction"]
    assert bad["error"].tolist() == ["expected a string, got null"] * 2
    with pytest.raises(car_onnx.UsageError, match=r"^on_error must be 'fail' or 'skip', got 'drop'$"):
        car_spark.select(df, bundle=bundle, on_error="drop")


def test_score_embed_can_skip_bad_rows(spark, bundle):
    from car_onnx import spark as car_spark

    rows = [dict(r) for r in ROWS[:30]]
    rows[3]["output"] = None
    scored, rejected = car_spark.score_embed(frame(spark, rows), bundle=bundle, precision="fp32", on_error="skip")
    got = scored.toPandas().sort_values("id")
    assert got["id"].tolist() == [r["id"] for r in rows if r["id"] != 3]
    want = car_onnx.load(bundle, precision="fp32").score([rows[i] for i in got["id"]])
    np.testing.assert_allclose(got["score"].to_numpy(), want, atol=1e-6)
    assert [(r["id"], r["field"], r["error"]) for r in rejected.collect()] == [
        (3, "output", "expected a string, got null")
    ]


def test_an_executor_with_another_bundle_fails_naming_its_host(spark, bundle, tmp_path):
    from car_onnx import spark as car_spark

    mine = shutil.copytree(bundle, tmp_path / "mine")
    scored = car_spark.score_embed(frame(spark, ROWS[:10]), bundle=mine)  # checked on the driver
    manifest = json.loads((mine / "manifest.json").read_text())
    (mine / "manifest.json").write_text(json.dumps(manifest, indent=4))  # another manifest by the time it runs
    with pytest.raises(Exception) as caught:
        scored.collect()
    text = str(caught.value)
    assert f"{mine} on {socket.gethostname()}: its manifest.json differs from the driver's" in text


def test_columns_it_adds_must_be_free(spark, bundle):
    from car_onnx import spark as car_spark

    df = frame(spark, ROWS[:5]).withColumnRenamed("id", "score")
    with pytest.raises(car_onnx.UsageError, match=r"^df already has a column 'score', which score_embed adds$"):
        car_spark.score_embed(df, bundle=bundle)


def test_cli_select_on_spark_writes_what_the_local_job_writes(bundle, tmp_path, cli):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    args = ("-b", bundle, "--n1", "5%", "--n2", "2", "--cluster", "exact", "--precision", "fp32", "--max-tokens", "1")
    rc, _, err, _ = cli("select", data, "-o", tmp_path / "local.jsonl", *args, "--quiet")
    assert rc == 0, err
    rc, out, err, _ = cli("select", data, "-o", tmp_path / "spark.jsonl", *args, "--spark", "local[2]", "--show")
    assert rc == 0, err
    assert out == cli("select", data, "-o", tmp_path / "shown.jsonl", *args, "--show", "--quiet")[1]  # --show too
    local = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert f"car-onnx: 240 records; {len(local)} selected on Spark local[2]; wrote {tmp_path / 'spark.jsonl'}" in err
    assert (tmp_path / "spark.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()  # fields in file order
    rejects = [json.loads(line) for line in (tmp_path / "spark.jsonl.rejects.jsonl").read_text().splitlines()]
    duplicate = {"reason": "duplicate_of", "kind": "exact", "record": ROWS[17]}
    assert rejects == [{"where": "row 17", "duplicate_of": "row 5", **duplicate}]  # rows counted from 0
    local = [json.loads(line) for line in (tmp_path / "local.jsonl.rejects.jsonl").read_text().splitlines()]
    assert local == [{"where": "line 18", "duplicate_of": "line 6", **duplicate}]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_cli_spark_writes_every_row_with_its_field_names_as_the_local_job(bundle, tmp_path, cli, fmt):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:80]))
    args = ("-b", bundle, "--n1", "4", "--n2", "1", "--cluster", "exact", "--precision", "fp32", "--max-tokens", "1")
    args += ("--all", "--score-field", "quality", "--cluster-field", "topic", "--quiet")
    assert cli("select", data, "-o", tmp_path / f"local.{fmt}", *args)[0] == 0
    rc, _, err, _ = cli("select", data, "-o", tmp_path / f"spark.{fmt}", *args, "--spark", "local[2]")
    assert rc == 0, err
    local = (tmp_path / f"local.{fmt}").read_text()
    assert (tmp_path / f"spark.{fmt}").read_text() == local
    rows = (
        [json.loads(line) for line in local.splitlines()]
        if fmt == "jsonl"
        else list(csv.DictReader(io.StringIO(local)))
    )
    assert len(rows) == 80 and [r["rank"] for r in rows if str(r["id"]) == "17"] == [None if fmt == "jsonl" else ""]


def test_cli_spark_skips_bad_records_into_the_rejects_file(bundle, tmp_path, cli):
    rows = [dict(r) for r in ROWS[:40]]
    rows[8]["output"] = None
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("-b", bundle, "--n1", "3", "--n2", "1", "--on-error", "skip", "--precision", "fp32", "--max-tokens", "1")
    rc, _, err, _ = cli(
        "select", data, "-o", tmp_path / "o.jsonl", *args, "--rejects", tmp_path / "bad.jsonl", "--spark", "local[2]"
    )
    assert rc == 0, err
    assert f"car-onnx: 1 record(s) rejected, written to {tmp_path / 'bad.jsonl'}" in err
    assert cli("select", data, "-o", tmp_path / "local.jsonl", *args, "--quiet")[0] == 0
    assert (tmp_path / "o.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    error = {"reason": "invalid", "field": "output", "error": "expected a string, got null", "record": rows[8]}
    duplicate = {"reason": "duplicate_of", "kind": "exact", "record": rows[17]}
    rejects = [json.loads(line) for line in (tmp_path / "bad.jsonl").open()]
    assert rejects == [{"where": "row 8", **error}, {"where": "row 17", "duplicate_of": "row 5", **duplicate}]
    local = [json.loads(line) for line in (tmp_path / "local.jsonl.rejects.jsonl").open()]  # as locally, by line
    assert local == [{"where": "line 9", **error}, {"where": "line 18", "duplicate_of": "line 6", **duplicate}]


def test_cli_spark_refuses_what_spark_does_itself(bundle, tmp_path, cli):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:5]))
    args = ("-b", bundle, "--spark", "local", "--chunk-records", "9", "--work-dir", tmp_path / "w")
    rc, _, err, _ = cli("select", data, "-o", tmp_path / "o.jsonl", *args)
    assert (rc, err.strip()) == (
        2,
        "car-onnx: error: --spark does not take --work-dir, --chunk-records: Spark splits the input into its "
        "partitions and reruns a failed task itself",
    )
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_spark_writes_the_report_of_the_local_job(bundle, tmp_path, cli):
    pytest.importorskip("matplotlib", reason="the report needs the [report] extra")
    from tests.test_report import block

    rows = [dict(r) for r in ROWS[:60]]
    rows[3]["output"] = None
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("-b", bundle, "--n1", "5", "--n2", "1", "--on-error", "skip", "--precision", "fp32", "--quiet")
    pages = {}
    for name, extra in (("local", ()), ("spark", ("--spark", "local[2]"))):
        rc, _, err, _ = cli(
            "select", data, "-o", tmp_path / f"{name}.jsonl", *args, "--report", tmp_path / f"{name}.html", *extra
        )
        assert rc == 0, err
        pages[name] = (tmp_path / f"{name}.html").read_text(encoding="utf-8")
    local, spark = (block(pages[name]) for name in ("local", "spark"))
    assert (local.pop("seconds"), spark.pop("seconds")) != ({}, {})
    local["bundle"].pop("threads")
    assert spark["bundle"].pop("threads") == 1  # each Spark worker's (--threads)
    assert spark == local and local["rejected"] == 1 and local["duplicates"] == {"exact": 1, "near": 0}
    shown = [r["output"] for r in rows if isinstance(r["output"], str) and r["output"] in pages["local"]]
    assert shown and all(text in pages["spark"] for text in shown)  # the same records shown


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_cli_spark_writes_a_uri_output_with_its_own_writers(bundle, tmp_path, cli, fmt):
    rows = [dict(r) for r in ROWS[:60]]
    rows[8]["output"] = None
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("-b", bundle, "--n1", "5", "--n2", "1", "--on-error", "skip", "--precision", "fp32", "--quiet")
    assert cli("select", data, "-o", tmp_path / f"local.{fmt}", *args)[0] == 0
    uri = (tmp_path / f"spark.{fmt}").as_uri()  # file:///...: a directory of part files, as on HDFS or S3
    rc, _, err, _ = cli("select", data, "-o", uri, *args, "--spark", "local[2]")
    assert rc == 0, err

    def read(path):
        if fmt == "parquet":
            import pyarrow.parquet as pq

            # Spark keeps the score a float32 column; car-onnx writes its shortest decimal as a double
            return [dict(r, score=np.float32(r["score"])) for r in pq.read_table(path).to_pylist()]
        if fmt == "jsonl":
            return [json.loads(line) for line in path.read_text().splitlines()]
        return list(csv.DictReader(io.StringIO(path.read_text())))

    local = read(tmp_path / f"local.{fmt}")
    parts = sorted((tmp_path / f"spark.{fmt}").glob("part-*"))
    assert len(parts) == 1 and read(parts[0]) == local and len(local) > 5  # in selection order
    (rejects,) = (tmp_path / f"spark.{fmt}.rejects.jsonl").glob("part-*")
    local_rejects = (tmp_path / f"local.{fmt}.rejects.jsonl").read_text().replace('"line 9"', '"row 8"')
    assert rejects.read_text() == local_rejects.replace('"line 18"', '"row 17"').replace('"line 6"', '"row 5"')

    rc, _, err, _ = cli("select", data, "-o", uri, *args, "--spark", "local[2]")  # refused before any work
    assert (rc, err.strip().splitlines()[-1]) == (
        2,
        f"car-onnx: error: {uri}: already exists; pass --force to replace it",
    )


def test_a_uri_output_needs_spark_and_a_format_spark_writes(bundle, tmp_path, cli):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:5]))
    uri = (tmp_path / "o.json").as_uri()
    rc, _, err, _ = cli("select", data, "-o", uri, "-b", bundle)
    assert (rc, err.strip()) == (
        2,
        f"car-onnx: error: {uri}: an output URI is written by Spark's own writers: give --spark MASTER",
    )
    rc, _, err, _ = cli("select", data, "-o", uri, "-b", bundle, "--spark", "local[1]")
    assert (rc, err.strip()) == (
        2,
        f"car-onnx: error: {uri}: Spark writes a URI output as JSON lines (.jsonl), CSV (.csv) or Parquet (.parquet), "
        "not a single JSON array; name it so or give --output-format",
    )
    assert not (tmp_path / "o.json").exists()
