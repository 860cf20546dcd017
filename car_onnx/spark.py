"""car-onnx inside Spark jobs (the [spark] extra): the same scores, embeddings and selection on a Spark DataFrame.

- `score_embed(df)` adds `score` and `embedding` columns through `mapInPandas` (Arrow batches): each executor's
  Python worker makes one Model, once, and before its first batch checks its bundle against the driver's manifest
  and the sha256 of its model files (a different bundle fails the job, naming the executor's host).
- `select(df)` is the CaR selection of `df`'s rows, as `Model.select` makes it of the same rows in the same order
  (a row's number is its position in `df`): the driver gathers each row's score and text key (and, with
  cluster="exact", its embedding); with cluster="sample", PCA and KMeans are fitted on the driver on the seeded
  sample's embeddings and every row is assigned to its cluster on the executors, and the n1 top-k and each
  cluster's picks are worked out a block of rows at a time in Spark tasks. It returns the selected rows with their
  score, cluster, rank and reason.
- Bad records fail the job naming the row and field, or, with on_error="skip", come back as a second DataFrame.
- `select_file` is `car-onnx select --spark`: Spark reads the file, car-onnx's writers write the output and the
  rejects file as the local job does.

Every executor needs car-onnx installed and the bundle at the same path as on the driver (a shared filesystem, or
the air-gapped kit unpacked at one path everywhere). pyspark is imported only here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .api import Model, ModelOptions
from .core.clustering import PCA_VARIANCE, SAMPLE_SIZE, SEED
from .core.columns import duplicates
from .core.rows import Rows
from .core.selection import N1, N2, SelectOptions, check_clustering
from .errors import BundleError, CarError, InputError, UsageError
from .io import containers
from .io.records import make_record
from .runtime.manifest import sha256_file

ROW = "_car_onnx_row"  # the row number column select() adds while it works (a row's position in the DataFrame)
ADDED = ("score", "embedding")
ERROR, ERROR_FIELD = "_car_onnx_error", "_car_onnx_field"  # where on_error="skip" marks a bad row while it works
LENGTH, UNITS = "_car_onnx_length", "_car_onnx_units"  # what --report reads of each row
LABEL = "DataFrame"  # how errors name the data
_MODELS: dict = {}  # per Python worker process: (bundle, options, manifest sha256) -> Model, made once


def _spark():
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise UsageError("{spark} needs pyspark: pip install 'car-onnx[spark]'", "spark") from None


def _executor_model(state: dict, manifest: str) -> Model:
    """The Model of this worker process: made once, after checking the bundle is the driver's."""
    key = (state["bundle"], state["options"], manifest)
    if key not in _MODELS:
        model = Model(state["bundle"], options=state["options"])
        model.check_driver_bundle(manifest)
        _MODELS[key] = model
    return _MODELS[key]


def _model(bundle, model_options: dict) -> tuple[dict, str]:
    """(the Model's picklable state, its manifest's sha256), checked on the driver."""
    model = Model(bundle, options=ModelOptions.parse(**model_options))
    model.precisions(("score", "embed"))
    return model.__getstate__(), sha256_file(model.bundle / "manifest.json")


def score_embed(
    df,
    *,
    bundle=None,
    device: str = "cpu",
    threads: int = 1,
    keys: bool = False,
    on_error: str = "fail",
    **model_options,
):
    """`df` with a `score` (float) and an `embedding` (array of float) column, computed on the executors, one
    onnxruntime session per Python worker made once. `model_options`: precision, fields, max_tokens, turns (as
    `car_onnx.load`); `threads`: the batches each worker runs side by side. With `keys`, also `text_key` (binary:
    what exact dedup compares). Lazy, as Spark is: a bad record fails the action that reads it, naming its row and
    field. With `on_error="skip"`: `(scored, rejected)`, the good rows scored and the bad ones with the field and the
    error that rejected them (one pass computes both where you persist the input or read them in one action)."""
    _spark()
    skip = _on_error(on_error)
    out = _scored(df, bundle, dict(model_options, device=device, threads=threads), keys, skip)
    return _split(out, df.columns) if skip else out


def _on_error(on_error: str) -> bool:
    if on_error not in ("fail", "skip"):
        raise UsageError(f"{{on_error}} must be 'fail' or 'skip', got {on_error!r}", "on_error")
    return on_error == "skip"


def _scored(df, bundle, model_options: dict, keys: bool, skip: bool, facts: bool = False):
    """`df` with score, embedding (and text_key); with `skip`, also ERROR and ERROR_FIELD, set on the bad rows
    (whose score and embedding are null) instead of failing; with `facts`, what the curation report reads of each
    row: LENGTH (characters of the text scored) and UNITS (exchanges and windows read)."""
    from pyspark.sql.types import ArrayType, BinaryType, FloatType, LongType, StringType, StructField, StructType

    added = ADDED + (("text_key",) if keys else ())
    for name in added + ((ERROR, ERROR_FIELD, "field", "error") if skip else ()):
        if name in df.columns:
            raise UsageError(f"{{df}} already has a column {name!r}, which score_embed adds", "df")
    state, manifest = _model(bundle, model_options)
    fields = [StructField("score", FloatType()), StructField("embedding", ArrayType(FloatType()))]
    if keys:
        fields.append(StructField("text_key", BinaryType()))
    if skip:
        fields += [StructField(ERROR, StringType()), StructField(ERROR_FIELD, StringType())]
    if facts:
        fields += [StructField(LENGTH, LongType()), StructField(UNITS, ArrayType(LongType()))]
    schema = StructType(df.schema.fields + fields)  # a new schema: df.schema.add() would change df's own
    numbered = ROW in df.columns  # select() numbers the rows: errors then name a row by its position

    def run(batches):
        model = _executor_model(state, manifest)
        for frame in batches:
            rows = list(containers.rows(frame.drop(columns=[ROW]) if numbered else frame))
            places = frame[ROW].tolist() if numbered else range(len(rows))
            records, bad = [], {}
            for i, row in enumerate(rows):
                try:
                    records.append(make_record(LABEL, i, f"row {places[i]}", row, model.fields))
                except InputError as err:
                    if not skip:
                        raise
                    bad[i] = err
            out = model.run(records, ("score", "embed")) if records else {"score": np.zeros(0), "embed": []}

            def spread(values):
                """One value per row: the good rows' `values` in order, None at the bad rows."""
                if not bad:
                    return values
                given = iter(values)
                return [None if i in bad else next(given) for i in range(len(rows))]

            frame = frame.assign(score=spread(out["score"]), embedding=spread(list(out["embed"])))
            if keys:
                frame = frame.assign(text_key=spread([model.key(r) for r in records]))
            if facts:
                lengths = [len(model.text(r.instruction, r.input, r.output)) for r in records]
                frame = frame.assign(
                    **{LENGTH: spread(lengths), UNITS: spread([list(model.units(r)) for r in records])}
                )
            if skip:
                found = [bad.get(i) for i in range(len(rows))]
                frame = frame.assign(
                    **{
                        ERROR: [None if err is None else err.reason for err in found],
                        ERROR_FIELD: [None if err is None else err.field for err in found],
                    }
                )
            yield frame

    return df.mapInPandas(run, schema)


def _split(out, columns):
    """(the good rows of a `_scored(skip=True)` frame, the bad rows with `field` and `error`)."""
    from pyspark.sql import functions as F

    good = out.filter(F.col(ERROR).isNull()).drop(ERROR, ERROR_FIELD)
    bad = out.filter(F.col(ERROR).isNotNull()).select(
        *columns, F.col(ERROR_FIELD).alias("field"), F.col(ERROR).alias("error")
    )
    return good, bad


def select(
    df,
    *,
    bundle=None,
    n1=N1,
    n2=N2,
    k: int | None = None,
    pca_variance: float = PCA_VARIANCE,
    seed: int = SEED,
    dedup="exact",
    cluster: str = "auto",
    sample_size: int = SAMPLE_SIZE,
    on_error: str = "fail",
    **model_options,
):
    """The CaR selection of `df`'s rows, as `Model.select` makes it of the same rows in the same order: a DataFrame
    of the selected rows (the n1 block by score, then the cluster picks) with `score`, `cluster`, `rank` (by score,
    1 = best) and `reason` ("top" or "cluster"). Options as `Model.select`; `model_options` go to `score_embed`.
    With `on_error="skip"`: `(selected, rejected)`, the selection of the good rows (as Model.select of those rows)
    and the bad rows with the `field` and `error` that rejected them."""
    options = SelectOptions.parse(
        n1=n1, n2=n2, k=k, pca_variance=pca_variance, seed=seed, dedup=dedup, cluster=cluster, sample_size=sample_size
    )
    skip = _on_error(on_error)
    done = _select(df, bundle, options, model_options, skip)
    return (done.selected, done.rejected.drop(ROW)) if skip else done.selected


@dataclass
class _Selected:
    rows: int  # rows of the input, bad ones included
    selected: object  # DataFrame: the selected rows
    rejected: object | None  # DataFrame: the bad rows (on_error="skip"), with their row number ROW
    duplicates: object | None  # DataFrame: the rows dropped as exact duplicates, with `duplicate_of` (a row number)
    every: object | None = None  # DataFrame: every good row with score, cluster, rank, selected, reason (`every`)
    report: tuple | None = None  # (Selection, texts, wheres, lengths, units) for the curation report (`report`)


def _select(
    df, bundle, options: SelectOptions, model_options: dict, skip=False, every=False, report=False
) -> _Selected:
    _spark()
    import pandas as pd
    from pyspark.sql import functions as F

    clusterer = options.clusterer()
    clusterer.check()
    for name in (ROW, "cluster", "rank", "reason", "text_key"):
        if name in df.columns:
            raise UsageError(f"{{df}} already has a column {name!r}, which select adds", "df")
    marked, numbered, total = _numbered(df)
    out = _scored(numbered, bundle, model_options, options.dedup.exact, skip, report).persist()
    scored, rejected = _split(out, [ROW, *df.columns]) if skip else (out, None)
    try:
        columns = [ROW, "score"] + (["text_key"] if options.dedup.exact else []) + ([LENGTH, UNITS] if report else [])
        with _errors():
            got = scored.select(*columns).toPandas().sort_values(ROW)
        n = len(got)
        if n == 0:
            raise containers.no_records()
        rows_of = got[ROW].to_numpy(np.int64)  # the good rows' numbers, by their position in the selection
        exact = duplicates(list(got["text_key"])) if options.dedup.exact else None
        ranked = n if exact is None else int((exact < 0).sum())
        check_clustering(clusterer, ranked, options.dedup.near)
        if clusterer.sampled(ranked):
            embeddings = _SparkRows(scored, rows_of)
        else:
            with _errors():
                rows = scored.select(ROW, "embedding").toPandas().sort_values(ROW)
            embeddings = np.stack(rows["embedding"].to_numpy()).astype(np.float32)
        sel = options.select(got["score"].to_numpy(np.float32), embeddings, duplicate_of=exact)
        spark = df.sparkSession
        picked = pd.DataFrame(
            {
                ROW: rows_of[np.asarray(sel.indices, dtype=np.int64)],
                "cluster": np.asarray(sel.labels[sel.indices], dtype=np.int64),
                "rank": sel.ranks_of(sel.indices),
                "reason": sel.reasons.astype(str),
                "_order": np.arange(len(sel.indices), dtype=np.int64),
            }
        )
        chosen = spark.createDataFrame(picked)
        written = scored.drop("embedding", "text_key")  # the input's columns with ROW and score
        kept = written.join(chosen.hint("broadcast"), on=ROW).orderBy("_order")
        dropped = None
        if exact is not None:
            repeats = np.flatnonzero(exact >= 0)
            pairs = pd.DataFrame({ROW: rows_of[repeats], "duplicate_of": rows_of[exact[repeats]]})
            dropped = numbered.join(F.broadcast(spark.createDataFrame(pairs, f"{ROW} long, duplicate_of long")), ROW)
            dropped = dropped.orderBy(ROW).localCheckpoint()
        if rejected is not None:
            rejected = rejected.orderBy(ROW).localCheckpoint()
        everything = None
        if every:  # every row as `car-onnx select --all` writes it, by row (4 numbers a row built on the driver)
            place = np.full(n, -1, dtype=np.int64)
            place[np.asarray(sel.indices, dtype=np.int64)] = np.arange(len(sel.indices))
            reason = np.where(place < 0, None, np.where(place < sel.n_top, "top", "cluster"))
            facts = pd.DataFrame(
                {
                    ROW: rows_of,
                    "cluster": np.asarray(sel.labels[:], dtype=np.int64),
                    "rank": pd.Series(np.asarray(sel.ranks), dtype="Int64").where(np.asarray(sel.ranks) > 0),
                    "selected": place >= 0,
                    "reason": reason,
                }
            )
            schema = f"{ROW} long, cluster long, rank long, selected boolean, reason string"
            everything = written.join(spark.createDataFrame(facts, schema), on=ROW).orderBy(ROW).localCheckpoint()
        page = _report_facts(scored, df.columns, got, rows_of, sel, bundle, model_options) if report else None
        return _Selected(total, kept.drop(ROW, "_order").localCheckpoint(), rejected, dropped, everything, page)
    finally:
        out.unpersist()
        marked.unpersist()


def _report_facts(scored, columns, got, rows_of, sel, bundle, model_options: dict) -> tuple:
    """What the curation report reads: the Selection with every row's values in memory, the clipped texts and
    places of the rows the page shows (gathered from the executors), and each row's text length and units."""
    import dataclasses

    from pyspark.sql import functions as F

    from .io import report as curation

    sel = dataclasses.replace(
        sel,
        scores=np.asarray(sel.scores[:]),
        labels=np.asarray(sel.labels[:]),
        duplicate_of=np.asarray(sel.duplicate_of[:]),
    )
    want = np.array(sorted(curation.wanted(sel)), dtype=np.int64)
    with _errors():
        shown = scored.filter(F.col(ROW).isin(rows_of[want].tolist())).select(ROW, *columns).toPandas()
    model = Model(bundle, options=ModelOptions.parse(**model_options))
    texts, wheres = {}, {}
    for number, row in zip(shown[ROW].tolist(), containers.rows(shown.drop(columns=[ROW]))):
        i = int(np.searchsorted(rows_of, number))  # its place among the good rows
        r = make_record(LABEL, i, f"row {number}", row, model.fields)
        texts[i], wheres[i] = curation.clip(model.text(r.instruction, r.input, r.output)), r.where
    units = np.stack(got[UNITS].to_numpy()).astype(np.int64)
    return sel, texts, wheres, got[LENGTH].to_numpy(np.int64), units


def _numbered(df):
    """(`df` marked and kept, `df` with each row's position as ROW, its number of rows): positions counted in the
    JVM, per partition (monotonically_increasing_id holds the partition in its upper bits and the place within it in
    the lower 33), offset by the sizes of the partitions before; the order is the order collect() gives."""
    from pyspark.sql import functions as F

    marked = df.withColumns({"_car_part": F.spark_partition_id(), "_car_id": F.monotonically_increasing_id()})
    marked = marked.persist()  # the same partitions for the count and for the rows
    sizes = sorted((r[0], r[1]) for r in marked.groupBy("_car_part").count().collect())
    starts, total = [], 0
    for part, size in sizes:
        starts += [F.lit(part), F.lit(total)]
        total += size
    start = F.create_map(*starts)[F.col("_car_part")] if starts else F.lit(0)
    place = F.col("_car_id") - F.shiftleft(F.col("_car_part").cast("long"), 33)
    return marked, marked.withColumn(ROW, (start + place).cast("long")).drop("_car_part", "_car_id"), total


DRIVER_MEMORY = "4g"  # the session --spark starts (a spark-submit's own settings win where it made the session)
SPARK_FORMATS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}


def select_file(
    job,
    output: Path,
    *,
    master: str,
    bundle,
    options: SelectOptions,
    model: ModelOptions,
    out_fmt=None,
    write_all: bool = False,
    score_field: str = "score",
    cluster_field: str = "cluster",
    show: bool = False,
    report: Path | None = None,
    uri: str | None = None,
):
    """`car-onnx select --spark MASTER`: the input file (or directory of shards) read by Spark, the selection made
    by `select`, and the selected rows (few: they come to the driver) written by car-onnx's own writers, as the
    local job writes them (with `write_all`, every row, streamed a partition at a time); bad rows (--on-error skip)
    and dropped duplicates go to the rejects file as locally, each named by its row number; with `show`, the run
    keeps each selected (row, record) for --show; with `report`, the curation report is written there as the local
    job writes it (records named by row). With `uri` (an output such as hdfs://..., s3a://... or file://...), Spark's
    own writers write the output there as a directory of part files (JSON lines, CSV with a header or Parquet; the
    selection in one part, in selection order; with `write_all`, every row, a part per partition, in row order), and
    any rejects to URI.rejects.jsonl. Returns a SparkRun."""
    _spark()
    import json
    import os
    import sys
    import time

    from pyspark.sql import SparkSession

    from .io.readers import check_input, detect_format
    from .io.writers import open_writer
    from .jobs.outputs import check_names, check_output, output_format, rejects_writer, shortest

    added = check_names(score_field, cluster_field, ("rank",) + (("selected",) if write_all else ()) + ("reason",))
    names = {"score": score_field, "cluster": cluster_field}
    needs_rejects = job.on_error == "skip" or options.dedup.exact
    if uri is None:
        fmt = output_format(output, out_fmt)
        rejects_path = check_output(job, output, fmt, needs_rejects)
    else:
        fmt = _uri_format(uri, out_fmt)
        if job.rejects is not None:
            raise UsageError(f"{uri}: Spark writes the rejects of a URI output to {uri}.rejects.jsonl: drop --rejects")
        for shard in job.shards:
            check_input(shard)
        rejects_path = None
    source = job.fmt or detect_format(job.shards[0])
    if report is not None:  # checked before any work
        from .io import report as curation

        curation.require()
        curation.check_path(report, job.force)
    start = time.perf_counter()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers run this interpreter (it has car-onnx)
    spark = SparkSession.builder.master(master).appName("car-onnx select").config("spark.ui.enabled", "false")
    # the driver gathers the scores and keys, and the sample's (or, exact, every) embedding: ~1.6 KB a row
    spark = spark.config("spark.driver.memory", DRIVER_MEMORY).config("spark.driver.maxResultSize", "0")
    spark = spark.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")  # Spark's own warnings off; car-onnx's errors still name row and field
    targets = () if uri is None else (uri, f"{uri}.rejects.jsonl") if needs_rejects else (uri,)
    for target in targets:  # before any work, as for a driver path
        if _exists(spark, target) and not job.force:
            raise UsageError(f"{target}: already exists; pass {{force=True}} to replace it", "force=True")
    reader = spark.read.option("multiLine", source == "json")
    if source == "csv":
        reader = reader.option("header", True)
    df = getattr(reader, SPARK_FORMATS[source])(str(job.input))
    if source in ("json", "jsonl"):  # Spark orders a JSON record's fields by name: back to the file's order
        df = df.select(*_file_order(job.shards[0], source, model.fields, df.columns))
    options_ = {k: getattr(model, k) for k in ("device", "precision", "threads", "fields", "max_tokens", "turns")}
    done = _select(df, bundle, options, options_, job.on_error == "skip", write_all, report is not None)
    with _errors():
        rows = [row.asDict(recursive=True) for row in done.selected.collect()]
    run = SparkRun(done.rows, len(rows))

    def named(row: dict) -> dict:
        return {names.get(k, k): shortest(v) if k == "score" else v for k, v in row.items()}

    if uri is not None:  # Spark's writers, as part files
        lines = [json.dumps(row, ensure_ascii=False) for row in _rejects(done, run)]
        if lines:
            run.rejects = f"{uri}.rejects.jsonl"
            rejects = spark.createDataFrame([(line,) for line in lines], "value string").coalesce(1)
            rejects.write.mode("overwrite" if job.force else "errorifexists").text(run.rejects)
        frame = done.every.drop(ROW) if write_all else done.selected.coalesce(1)
        with _errors():
            _write(frame.withColumnsRenamed(names), uri, fmt, job.force)
    else:  # car-onnx's writers on the driver, as the local job writes
        with rejects_writer(job, rejects_path) as rejects:
            for row in _rejects(done, run):
                rejects.write(row)
            if write_all:
                with open_writer(output, fmt, (*df.columns, *added)) as writer:
                    for row in done.every.drop(ROW).toLocalIterator():
                        writer.write(named(row.asDict(recursive=True)))
            else:
                with open_writer(output, fmt) as writer:
                    for row in rows:
                        writer.write(named(row))
        run.rejects = rejects_path if rejects is not None and rejects.count else None
    if show:
        run.shown = [(named(row), _record(i, row, df.columns, model)) for i, row in enumerate(rows)]
    if report is not None:
        sel, texts, wheres, lengths, units = done.report
        page = curation.Run(
            texts,
            wheres,
            lengths,
            units,
            input=str(job.input),
            records=run.records - run.rejected,  # as the local job counts them: the records read
            rejected=run.rejected,
            duplicates={"exact": run.duplicates, "near": int((sel.duplicate_of >= 0).sum()) - run.duplicates},
            n1=str(options.n1),
            n2=str(options.n2),
            dedup=str(options.dedup),
            bundle=curation.bundle_info(Model(bundle, options=model)),
            seconds={"spark": time.perf_counter() - start},
        )
        curation.write(report, sel, page)
    return run


def _rejects(done: _Selected, run: SparkRun):
    """The rejects file's rows, as the local job writes them (named by row): the bad rows, then the exact
    duplicates dropped before ranking; counted in `run`."""
    from .jobs.scanning import duplicate_row, invalid_row

    for row in _collected(done.rejected):
        run.rejected += 1
        where, field, error = f"row {row.pop(ROW)}", row.pop("field"), row.pop("error")
        yield invalid_row(where, field, error, row)
    for row in _collected(done.duplicates):
        run.duplicates += 1
        where, original = f"row {row.pop(ROW)}", f"row {row.pop('duplicate_of')}"
        yield duplicate_row(where, original, "exact", row)


def _record(i: int, row: dict, columns: list[str], model: ModelOptions):
    """The record of the `i`th selected row (for --show)."""
    return make_record(LABEL, i, f"row {i}", {k: row[k] for k in columns}, model.fields)


URI_FORMATS = ("jsonl", "csv", "parquet")  # what Spark's writers write of car-onnx's output formats


def _uri_format(uri: str, out_fmt: str | None) -> str:
    """The output format of a URI output, as for a path (jobs.outputs.output_format); Spark writes no single JSON
    array."""
    from .jobs.outputs import output_format

    fmt = output_format(uri.rstrip("/"), out_fmt)
    if fmt not in URI_FORMATS:
        raise UsageError(
            f"{uri}: Spark writes a URI output as JSON lines (.jsonl), CSV (.csv) or Parquet (.parquet), not a single "
            "JSON array; name it so or give --output-format"
        )
    return fmt


def _exists(spark, uri: str) -> bool:
    """Whether `uri` exists, asked of the Hadoop file system Spark writes it with."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return bool(path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(path))


def _write(frame, uri: str, fmt: str, force: bool) -> None:
    """`frame` written to `uri` by Spark: JSON lines with null fields kept, CSV with a header, or Parquet."""
    writer = frame.write.mode("overwrite" if force else "errorifexists")
    if fmt == "jsonl":
        writer.option("ignoreNullFields", False).json(uri)
    elif fmt == "csv":
        writer.option("header", True).csv(uri)
    else:
        writer.parquet(uri)


def _file_order(path, fmt: str, fields, columns: list[str]) -> list[str]:
    """`columns` in the order of the first record of `path` (bad or not) that is an object; the others after."""
    from .io.readers import iter_records

    first: list[dict] = []

    def keep(err, row):
        if isinstance(row, dict):
            first.append(row)

    try:
        for record in iter_records(path, fmt=fmt, fields=fields, reject=keep):
            first.append(record.row)
            break
    except InputError:  # no record to read: Spark's reading of the file says what is wrong
        pass
    order = [c for c in (first[0] if first else ()) if c in columns]
    return order + [c for c in columns if c not in order]


@dataclass
class SparkRun:
    """What `select_file` did."""

    records: int  # rows read
    selected: int
    rejected: int = 0  # bad rows, skipped
    duplicates: int = 0  # rows dropped as exact duplicates
    rejects: Path | str | None = None  # where those went (a URI output's: URI.rejects.jsonl)
    shown: list = field(default_factory=list)  # (output row, record) of each selected row, for --show


def _collected(frame) -> list[dict]:
    """The rows of a (small) DataFrame on the driver, as dicts; none for None."""
    return [] if frame is None else [row.asDict(recursive=True) for row in frame.toLocalIterator()]


class _errors:
    """Turns an error raised on an executor back into the car-onnx error it was (its class and its message)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or isinstance(err, CarError):
            return False
        text = str(err)
        for cls in (InputError, BundleError, UsageError):
            marker = f"car_onnx.errors.{cls.__name__}: "
            if marker in text:
                message = text.split(marker)[-1].splitlines()[0]
                raise _rebuilt(cls, message) from None
        return False


def _rebuilt(cls, message: str) -> CarError:
    error = CarError.__new__(cls)
    Exception.__init__(error, message)
    error.template, error.params = message, ()
    return error


class _SparkRows(Rows):
    """A scored DataFrame's embeddings as clustering.Clusterer reads them in sample mode: the sample's rows
    gathered by number, every row assigned to its cluster on the executors (only the labels come to the driver).
    Position i is the row numbered `rows_of[i]` (ascending: with on_error="skip", the bad rows' numbers are gaps)."""

    def __init__(self, scored, rows_of: np.ndarray):
        self.scored, self.rows_of, self.shape = scored, rows_of, (len(rows_of), None)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        """The embeddings of `rows` (row numbers, or a slice), gathered from the executors."""
        from pyspark.sql import functions as F

        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)))
        rows = self.rows_of[np.asarray(rows, dtype=np.int64)]
        wanted = self.scored.sparkSession.createDataFrame([(int(r),) for r in rows], f"{ROW} long")
        got = self.scored.join(F.broadcast(wanted), on=ROW).select(ROW, "embedding").toPandas()
        by_row = dict(zip(got[ROW].tolist(), got["embedding"]))
        return np.stack([by_row[int(r)] for r in rows]).astype(np.float32)

    def map(self, fn, items):
        """The selection's per-block work (selection.select_streamed) in Spark tasks, a few blocks at a time, as
        under Ray: the n1 block is a distributed top-k and each cluster's picks a group-by on cluster, merged on
        the driver."""
        context = self.scored.sparkSession.sparkContext
        most, batch = 2 * context.defaultParallelism, []
        for item in items:
            batch.append(item)
            if len(batch) == most:
                yield from context.parallelize(batch, len(batch)).map(fn).collect()
                batch = []
        if batch:
            yield from context.parallelize(batch, len(batch)).map(fn).collect()

    def assign(self, pca, km, out) -> None:
        """Every row's cluster into `out`, assigned on the executors."""
        from .core.clustering import assign

        def labels(batches):
            for frame in batches:
                x = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
                yield frame[[ROW]].assign(label=assign(x, pca, km))

        got = self.scored.select(ROW, "embedding").mapInPandas(labels, f"{ROW} long, label long").toPandas()
        out[np.searchsorted(self.rows_of, got[ROW].to_numpy())] = got["label"].to_numpy()


__all__ = ["score_embed", "select", "select_file"]
