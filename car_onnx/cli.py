"""The `car-onnx` command: thin typer commands over the Python API. Errors become one line on stderr."""

from __future__ import annotations

import dataclasses
import errno
import functools
import importlib
import os
import re
import resource
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import jobs
from .api import CHUNK_RECORDS, RAY_CHUNK_RECORDS, Model, ModelOptions
from .core.clustering import CLUSTER_MODES, EXACT_LIMIT, PCA_VARIANCE, SAMPLE_SIZE, SEED
from .core.progress import Pace, Step
from .core.selection import N1, N2, SelectOptions
from .errors import CarError, UsageError
from .io.readers import FORMATS
from .jobs.scanning import ON_ERROR
from .jobs.stop import Terminated, sigterm_stops, stopped_message
from .runtime.bundle import find_bundle
from .runtime.manifest import PRECISIONS
from .runtime.session import DEVICES, machine_threads, resolve
from .version import __version__

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="CaR instruction-data selection on onnxruntime.",
)

DeviceName = Enum("DeviceName", {d: d for d in DEVICES}, type=str)
PrecisionName = Enum("PrecisionName", {p: p for p in PRECISIONS}, type=str)
FormatName = Enum("FormatName", {f: f for f in FORMATS}, type=str)
ClusterName = Enum("ClusterName", {m: m for m in CLUSTER_MODES}, type=str)
OnErrorName = Enum("OnErrorName", {e: e for e in ON_ERROR}, type=str)

Input = Annotated[
    Path,
    typer.Argument(
        help="Dataset: .json (array), .jsonl, .csv or .parquet; or a directory (its dataset files, by name) or a quoted glob of them, read as one dataset.",
        show_default=False,
    ),
]
Output = Annotated[Path, typer.Option("--output", "-o", help="Where to write the result.", show_default=False)]
URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # an output only Spark writes: hdfs://..., s3a://..., file://...
BundleDir = Annotated[
    Optional[Path], typer.Option("--bundle", "-b", help="Bundle directory [default: the built default bundle]")
]
Device = Annotated[DeviceName, typer.Option(help="auto: CUDA when onnxruntime offers it.")]
Threads = Annotated[
    Optional[int], typer.Option(help="Batches run side by side on CPU [default: the cores this process may use]")
]
Precision = Annotated[Optional[PrecisionName], typer.Option(help="[default: int8 on CPU, fp16 on CUDA]")]
InFormat = Annotated[Optional[FormatName], typer.Option("--format", help="Input format [default: by suffix]")]
OutFormat = Annotated[
    Optional[FormatName], typer.Option("--output-format", help="Output format [default: by the output's suffix]")
]
Fields = Annotated[
    Optional[list[str]],
    typer.Option("--field", help="Map a field: instruction=question, output=answer, input=context."),
]


class TurnsName(str, Enum):
    all = "all"
    first = "first"


Turns = Annotated[
    TurnsName,
    typer.Option(
        help="Which exchanges of a conversation (messages / conversations) are read: all (each assistant turn with the user turn it answers; the record's score is their mean) or first (the paper's reading).",
    ),
]
MaxTokens = Annotated[
    Optional[int],
    typer.Option(
        help="Token budget of one batch (rows x longest row); int8 runs one text per batch [default: 2048 on CPU, 32768 on CUDA].",
        show_default=False,
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, messages or summary.")]
WorkDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--work-dir",
        help="Keep finished chunks here; a run started again with the same arguments resumes [default: a temporary directory].",
    ),
]
OnError = Annotated[
    OnErrorName,
    typer.Option(
        "--on-error", help="fail: stop at the first bad record; skip: write bad records to the rejects file and go on."
    ),
]
Rejects = Annotated[
    Optional[Path],
    typer.Option(
        "--rejects",
        help="Rejects file (JSONL) of skipped bad records and dropped duplicates, written when there are any [default: OUTPUT.rejects.jsonl].",
    ),
]
ScoreField = Annotated[
    str, typer.Option(help="Name of the field the output adds for the score (for records that have a 'score' already).")
]
ChunkRecords = Annotated[
    int, typer.Option("--chunk-records", help="Records per inference chunk (the unit --work-dir keeps).")
]


def _value(choice):
    return None if choice is None else choice.value


class CliStages(jobs.Stages):
    """Stages shown on stderr: progress bars with rate and ETA on a terminal; plain timestamped lines (every 10%,
    at most one a second, or every 30 s) when stderr is a file or a pipe, so that a batch job's log shows where it
    is. Either appears only once a stage has run progress.DELAY seconds: a stage that ends sooner shows nothing."""

    def __init__(self, quiet: bool, *, clock=None):
        super().__init__()
        self.quiet, self.tty, self.clock = quiet, sys.stderr.isatty(), clock or time.monotonic

    @contextmanager
    def progress(self, name, total):
        if self.quiet:
            yield lambda n: None
        elif self.tty:
            with self._bar(name, total) as advance:
                yield advance
        else:
            with self._lines(name, total) as advance:
                yield advance

    @contextmanager
    def _bar(self, name, total):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        pace = Pace(clock=self.clock)

        class Paced(Progress):
            def get_renderables(self):  # drawn by rich's refresh thread, from the moment the stage is due
                return super().get_renderables() if pace.due else ()

            def stop(self):
                if pace.due:
                    return super().stop()
                self.live.transient = True  # a stage never drawn leaves no (empty) line behind
                self.live.stop()

        rate = TextColumn("{task.fields[rate]}")
        columns = [
            TextColumn(f"{name:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            rate,
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        with Paced(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(name, total=total, rate="")

            def advance(n):
                bar.advance(task, n)
                speed = bar.tasks[0].speed
                bar.update(task, rate=f"{speed:,.1f}/s" if speed else "")

            yield advance
            if total is not None:
                bar.update(task, completed=total)

    @contextmanager
    def _lines(self, name, total):
        start, done = self.clock(), 0
        last = [start, 0]

        def line(text):
            return f"{time.strftime('%Y-%m-%d %H:%M:%S')} car-onnx: {name}: {text}"

        # the opening keeps the time the stage began, though it is written only once the stage is due
        step = Step(
            lambda text: typer.echo(text, err=True),
            line(f"started ({total:,} records)" if total else "started"),
            clock=self.clock,
        )

        def advance(n):
            nonlocal done
            done += n
            now = self.clock()
            tenth = total and done * 10 // total > last[1] * 10 // total and now - last[0] >= 1
            if (tenth or now - last[0] >= 30) and step.pace.due:
                rate = done / max(now - start, 1e-9)
                eta = f", ETA {_duration((total - done) / rate)}" if total and rate else ""
                share = f"/{total:,} ({100 * done / total:.0f}%)" if total else ""
                step.line(line(f"{done:,}{share}, {rate:,.1f}/s{eta}"))
                last[:] = [now, done]

        yield advance
        step.close(line(f"done in {_duration(self.clock() - start)}"))

    def note(self, message):
        if self.quiet:
            return
        stamp = "" if self.tty else f"{time.strftime('%Y-%m-%d %H:%M:%S')} "
        typer.echo(f"{stamp}car-onnx: {message}", err=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
        if seconds >= 60
        else f"{seconds}s"
    )


def _flag(name: str) -> str:
    """The CLI's flag for a library parameter name: n1 -> --n1, work_dir -> --work-dir, force=True -> --force."""
    return "--" + name.removesuffix("=True").replace("_", "-")


def _memory_limit() -> int | None:
    """The address-space limit (`ulimit -v`, RLIMIT_AS) this process runs under, in bytes; None without one."""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if soft == resource.RLIM_INFINITY else soft


@contextmanager
def _native_threads(limit: int | None):
    """Under an address-space limit, native code must not be the first to run out: OpenBLAS, OpenMP, tokenizers'
    Rust, onnxruntime's and pyarrow's C++ exit, abort or hang where Python raises MemoryError. So they run on the
    calling thread alone, every library a run loads is loaded now, and each BLAS maps its work buffer now; then
    what grows with the data is Python's and numpy's, and those raise."""
    if limit is None:
        yield
        return
    if limit - _vm_size() < 512 * 2**20:  # the libraries below map ~450 MB; pyarrow aborts if it cannot
        raise MemoryError
    # read by libraries loaded below (OpenMP, scipy's BLAS) and by each tokenizers call
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # all a run loads, loaded now (scikit-learn loads scipy, and pandas and pyarrow where they are installed)
    for name in ("onnxruntime", "tokenizers", "sklearn.cluster", "sklearn.decomposition"):
        importlib.import_module(name)
    import numpy as np
    from scipy.linalg.blas import sgemm  # the BLAS scikit-learn calls (numpy has its own)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        if limit - _vm_size() < 96 * 2**20:  # two 32 MB BLAS buffers, and room for a first chunk
            raise MemoryError
        a = np.ones((512, 512), np.float32)
        a @ a, sgemm(1.0, a, a)
        yield


def _vm_size() -> int:
    """This process's virtual size in bytes (VmSize in /proc/self/status)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def _out_of_memory(err: BaseException, limit: int | None) -> bool:
    """Whether err is memory running out: a MemoryError or ENOMEM anywhere; under an address-space limit also a
    shared library that cannot be mapped or a thread that cannot be started."""
    if isinstance(err, MemoryError) or isinstance(err, OSError) and err.errno == errno.ENOMEM:
        return True
    text = str(err)
    return limit is not None and any(
        s in text
        for s in (
            "failed to map segment",
            "Cannot allocate memory",
            "can't start new thread",
            "bad_alloc",
            "bad allocation",
        )
    )


def _guard(command):
    """Run a command so that a CarError (or any error) becomes one line on stderr and exit code 1 (2 for usage),
    warnings one line each, Ctrl-C exit code 130 and SIGTERM 143 (with how to resume), running out of memory one
    line that names the address-space limit."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        debug = os.environ.get("CAR_ONNX_DEBUG") == "1"
        limit = _memory_limit()
        try:
            caught: list = []
            try:
                with sigterm_stops(), _native_threads(limit), warnings.catch_warnings(record=True) as caught:
                    return command(*args, **kwargs)
            finally:  # after the summary: what the user should know about this run; others as Python shows them
                for w in caught:
                    if Path(w.filename).resolve().is_relative_to(HERE):
                        typer.echo(f"car-onnx: warning: {w.message}", err=True)
                    else:
                        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        except CarError as err:
            if debug:
                traceback.print_exc()
            text = err.render(_flag)
            typer.echo(f"car-onnx: error: {text}", err=True)
            raise typer.Exit(2 if isinstance(err, UsageError) else 1) from None
        except (KeyboardInterrupt, Terminated) as err:  # faults: say where the finished work is
            sigterm = isinstance(err, Terminated)
            text = stopped_message("SIGTERM" if sigterm else "SIGINT", kwargs.get("work_dir"), "work_dir" in kwargs)
            typer.echo(f"car-onnx: {text}", err=True)
            raise typer.Exit(143 if sigterm else 130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:
            if debug:
                raise
            if _out_of_memory(err, limit):  # faults: one line, like any error (no output was written)
                within = f" within the address-space limit of {limit / 2**20:,.0f} MB (ulimit -v)" if limit else ""
                typer.echo(
                    f"car-onnx: error: out of memory{within}; give the job more memory or lower "
                    "--max-tokens / --chunk-records",
                    err=True,
                )
                if limit:  # without memory, native libraries' threads and destructors may crash Python's shutdown
                    sys.stderr.flush()
                    os._exit(1)
                raise typer.Exit(1) from None
            typer.echo(
                f"car-onnx: internal error: {type(err).__name__}: {err} (set CAR_ONNX_DEBUG=1 for the traceback)",
                err=True,
            )
            raise typer.Exit(1) from None

    return run


def _guard_all(group: typer.Typer) -> None:
    for info in group.registered_commands:
        info.callback = _guard(info.callback)
    for sub in group.registered_groups:
        _guard_all(sub.typer_instance)


def _job(input, fmt, force, work_dir, on_error, rejects, chunk_records) -> jobs.Job:
    return jobs.Job(Path(input), _value(fmt), force, work_dir, on_error.value, rejects, chunk_records)


def _model(bundle, device, threads, precision, field, max_tokens, turns=TurnsName.all) -> Model:
    options = ModelOptions.parse(
        device=device.value,
        threads=threads,
        precision=_value(precision),
        fields=field or [],
        max_tokens=max_tokens,
        turns=turns.value,
    )
    return Model(bundle, options=options)


def _summary(report: jobs.RunSummary, quiet: bool, output: Path) -> None:
    if quiet:
        return
    parts = [f"{report.records:,} records"]
    if report.rejected:
        parts.append(f"{report.rejected:,} rejected")
    if report.duplicates and sum(report.duplicates.values()):
        exact, near = report.duplicates["exact"], report.duplicates["near"]
        parts.append(f"{exact + near:,} duplicates dropped" + (f" ({exact:,} exact, {near:,} near)" if near else ""))
    if report.selected:
        parts.append(
            f"{report.selected:,} selected ({100 * report.selected / report.records:.2f}%) = "
            f"{report.top:,} top + {report.selected - report.top:,} cluster picks of {report.clusters:,} "
            "clusters"
        )
    times = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    typer.echo(f"car-onnx: {'; '.join(parts)}; wrote {output} [{times}]", err=True)


@app.command()
def select(
    input: Input,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the result; with --spark also a URI Spark writes (hdfs://, s3a://, file://...).",
            show_default=False,
            metavar="PATH",
        ),
    ],
    bundle: BundleDir = None,
    n1: Annotated[
        str,
        typer.Option(
            help="Top records overall: a count or a percentage of the records (2%). At or above the number of records, every record is selected (a warning says so)."
        ),
    ] = str(N1),
    n2: Annotated[
        str,
        typer.Option(
            help="Top records of each cluster: a count, or a percentage of each cluster's size (5%: at least 1 per cluster)."
        ),
    ] = str(N2),
    k: Annotated[Optional[int], typer.Option(help="Clusters [default: int(sqrt(n/2))].")] = None,
    pca_variance: Annotated[float, typer.Option(help="Variance PCA keeps before clustering.")] = PCA_VARIANCE,
    seed: Annotated[int, typer.Option(help="Seed of PCA and KMeans.")] = SEED,
    all: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Write every record (input order) with score, cluster, rank, selected (true/false) and reason.",
        ),
    ] = False,
    device: Device = DeviceName.auto,
    threads: Threads = None,
    precision: Precision = None,
    format: InFormat = None,
    output_format: OutFormat = None,
    field: Fields = None,
    max_tokens: MaxTokens = None,
    turns: Turns = TurnsName.all,
    force: Force = False,
    quiet: Quiet = False,
    work_dir: WorkDirOpt = None,
    on_error: OnError = OnErrorName.fail,
    rejects: Rejects = None,
    chunk_records: Annotated[
        Optional[int],
        typer.Option(
            "--chunk-records",
            help=f"Records per inference chunk (the unit --work-dir keeps, and the unit of work of a Ray actor) [default: {CHUNK_RECORDS}; with --ray, {RAY_CHUNK_RECORDS}, so that actors finish together].",
            show_default=False,
        ),
    ] = None,
    dedup: Annotated[
        str,
        typer.Option(
            help="Duplicates dropped before ranking: none (the paper's behaviour); exact: later copies of the same text (whitespace-normalised); near:T: exact, and within each cluster records whose embedding cosine to a higher-scored kept record is >= T. Dropped rows go to the rejects file."
        ),
    ] = "exact",
    score_field: ScoreField = jobs.SCORE_FIELD,
    cluster_field: Annotated[
        str, typer.Option(help="Name of the field the output adds for the cluster id.")
    ] = jobs.CLUSTER_FIELD,
    show: Annotated[
        bool, typer.Option("--show", help="Print the selected records (score, cluster, reason, text).")
    ] = False,
    report: Annotated[
        Optional[Path],
        typer.Option(
            help="Also write a curation report: one offline HTML page of what was kept, dropped and why (needs the [report] extra)."
        ),
    ] = None,
    cluster: Annotated[
        ClusterName,
        typer.Option(
            help=f"exact: PCA and KMeans fitted on every record; sample: fitted on a seeded sample of --sample-size records, then every record assigned (memory bounded by the sample); auto: exact up to {EXACT_LIMIT:,} records."
        ),
    ] = ClusterName.auto,
    sample_size: Annotated[
        int, typer.Option(help="Records PCA and KMeans are fitted on with --cluster sample.")
    ] = SAMPLE_SIZE,
    ray: Annotated[
        Optional[str],
        typer.Option(
            help="Run on a Ray cluster (needs the [ray] extra): local (start one on this machine), auto (RAY_ADDRESS or the running one) or HOST:PORT. INPUT may then be a directory or glob of shards; --threads is the CPUs of each actor [default: 1].",
            show_default=False,
        ),
    ] = None,
    spark: Annotated[
        Optional[str],
        typer.Option(
            help="Run on Spark (needs the [spark] extra and Java): a master such as local[*], spark://HOST:PORT or yarn. Spark reads INPUT (a file or a directory of shards on a path every node sees); the selected rows are written to OUTPUT as without it. --threads is each Python worker's batches side by side [default: 1].",
            show_default=False,
        ),
    ] = None,
):
    """Select the CaR subset: top n1 by quality score plus the top n2 of every embedding cluster. Each selected
    record is written with its score, cluster, rank (by score, 1 = best) and reason (top or cluster)."""
    uri = output if URI.match(output) else None
    if uri is not None and spark is None:
        raise UsageError(f"{output}: an output URI is written by Spark's own writers: give --spark MASTER")
    output = Path(output)
    if spark is not None:
        if ray is not None:
            raise UsageError("--spark does not take --ray: give one of them")
        given = {"--work-dir": work_dir is not None, "--chunk-records": chunk_records is not None}
        if any(given.values()):
            raise UsageError(
                f"--spark does not take {', '.join(k for k, v in given.items() if v)}: Spark splits the input into "
                "its partitions and reruns a failed task itself"
            )
    chunk_records = chunk_records or (RAY_CHUNK_RECORDS if ray else CHUNK_RECORDS)
    job = _job(input, format, force, work_dir, on_error, rejects, chunk_records)
    model = _model(bundle, device, None if ray else threads, precision, field, max_tokens, turns)
    selection = SelectOptions.parse(
        n1=n1,
        n2=n2,
        k=k,
        pca_variance=pca_variance,
        seed=seed,
        dedup=dedup,
        cluster=cluster.value,
        sample_size=sample_size,
    )
    if spark is not None:
        from . import spark as on_spark

        options = dataclasses.replace(model.options, threads=threads or 1)
        run = on_spark.select_file(
            job,
            output,
            master=spark,
            bundle=model.bundle,
            options=selection,
            model=options,
            out_fmt=_value(output_format),
            write_all=all,
            score_field=score_field,
            cluster_field=cluster_field,
            show=show,
            report=report,
            uri=uri,
        )
        if show:
            _show(run.shown, score_field, cluster_field)
        if not quiet:
            if run.rejected:
                typer.echo(f"car-onnx: {run.rejected} record(s) rejected, written to {run.rejects}", err=True)
            if run.duplicates:
                typer.echo(
                    f"car-onnx: {run.duplicates} duplicate(s) dropped before ranking, written to {run.rejects}",
                    err=True,
                )
            typer.echo(
                f"car-onnx: {run.records:,} records; {run.selected:,} selected on Spark {spark}; wrote {uri or output}",
                err=True,
            )
        return
    options = dict(
        options=selection,
        write_all=all,
        out_fmt=_value(output_format),
        score_field=score_field,
        cluster_field=cluster_field,
        stages=CliStages(quiet),
        report_path=report,
        show=show,
    )
    engine = None
    if ray is not None:
        from . import ray as on_ray

        engine = on_ray.RayEngine(ray, threads or on_ray.ACTOR_THREADS)
    report = jobs.select(job, model, output, engine=engine, **options)
    if show:
        _show(report.shown, score_field, cluster_field)
    _summary(report, quiet, output)


def _show(shown: list, score_field: str, cluster_field: str) -> None:
    """One line per selected record: its place, score, cluster, reason, instruction and the start of its answer
    (the texts the model read: for conversations, the user turn and the reply)."""

    def clip(value, width):
        text = " ".join(str(value).split())
        return text if len(text) <= width else text[: width - 1] + "…"

    typer.echo(f"{'#':>4}  {'score':>8}  {'cluster':>7}  {'reason':<7}  instruction -> output")
    for place, (row, record) in enumerate(shown, 1):
        typer.echo(
            f"{place:>4}  {row[score_field]:>8.4f}  {row[cluster_field]:>7}  {row['reason']:<7}  "
            f"{clip(record.instruction, 60)} -> {clip(record.output, 50)}"
        )


@app.command()
def score(
    input: Input,
    output: Output,
    bundle: BundleDir = None,
    device: Device = DeviceName.auto,
    threads: Threads = None,
    precision: Precision = None,
    format: InFormat = None,
    output_format: OutFormat = None,
    field: Fields = None,
    max_tokens: MaxTokens = None,
    turns: Turns = TurnsName.all,
    force: Force = False,
    quiet: Quiet = False,
    work_dir: WorkDirOpt = None,
    on_error: OnError = OnErrorName.fail,
    rejects: Rejects = None,
    chunk_records: ChunkRecords = CHUNK_RECORDS,
    score_field: ScoreField = jobs.SCORE_FIELD,
):
    """Write every record with its quality score."""
    job = _job(input, format, force, work_dir, on_error, rejects, chunk_records)
    model = _model(bundle, device, threads, precision, field, max_tokens, turns)
    _summary(
        jobs.score(job, model, output, out_fmt=_value(output_format), score_field=score_field, stages=CliStages(quiet)),
        quiet,
        output,
    )


@app.command()
def embed(
    input: Input,
    output: Output,
    bundle: BundleDir = None,
    device: Device = DeviceName.auto,
    threads: Threads = None,
    precision: Precision = None,
    format: InFormat = None,
    field: Fields = None,
    max_tokens: MaxTokens = None,
    turns: Turns = TurnsName.all,
    force: Force = False,
    quiet: Quiet = False,
    work_dir: WorkDirOpt = None,
    on_error: OnError = OnErrorName.fail,
    rejects: Rejects = None,
    chunk_records: ChunkRecords = CHUNK_RECORDS,
):
    """Write sentence embeddings as a float32 .npy, one row per record in input order."""
    job = _job(input, format, force, work_dir, on_error, rejects, chunk_records)
    model = _model(bundle, device, threads, precision, field, max_tokens, turns)
    _summary(jobs.embed(job, model, output, stages=CliStages(quiet)), quiet, output)


@app.command("eval")
def evaluate(
    bundle: Annotated[
        Optional[Path], typer.Argument(help="Bundle directory [default: the built default bundle]")
    ] = None,
    pairs: Annotated[
        Optional[Path],
        typer.Option(
            help="Pairs CSV (src,score in consecutive rows, or src,pos,neg), texts in the bundle's template: the share in which the better text scores higher."
        ),
    ] = None,
    records: Annotated[
        Optional[Path],
        typer.Option(
            help="A dataset of real records: for each kind of defect, the share whose real answer outscores a corrupted copy."
        ),
    ] = None,
    foreign: Annotated[
        Optional[Path],
        typer.Option(
            help="A dataset whose answers are in another language than --records' (lends the 'foreign' kind)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Use at most this many records of --records (and of --foreign).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the corruptions.")] = 0,
    device: Device = DeviceName.auto,
    threads: Threads = None,
    precision: Precision = None,
    field: Fields = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")] = False,
):
    """How a bundle's scorer ranks on your own data: expert agreement on pairs, and its defect table on records
    (answers to other questions, echoes, cut-offs, loops, empty and boilerplate answers, answers partly refused)."""
    import json
    from itertools import islice

    from . import evaluate as ev
    from .io.readers import iter_records

    if pairs is None and records is None:
        raise UsageError("give {pairs} and/or {records}", "pairs", "records")
    if limit < 1:
        raise UsageError(f"{{limit}} must be >= 1, got {limit}", "limit")
    model = _model(bundle, device, threads, precision, field, None)
    result: dict = {"bundle": str(model.bundle), "precision": model.precisions(("score",))["score"]}
    if pairs is not None:
        result["pairs"] = {"file": str(pairs), **ev.agreement(model, pairs)}
    if records is not None:
        found = list(islice(iter_records(records, fields=model.fields), limit))
        lent = [r.output for r in islice(iter_records(foreign), limit)] if foreign is not None else None
        result["defects"] = {"file": str(records), "table": ev.defect_table(model, found, seed=seed, foreign=lent)}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"bundle {result['bundle']} ({result['precision']})")
    if "pairs" in result:
        typer.echo(
            f"expert agreement: {result['pairs']['agreement']:.4f} on {result['pairs']['pairs']:,} pairs of {pairs}"
        )
    if "defects" in result:
        table = result["defects"]["table"]
        typer.echo(
            f"defects on {len(found):,} records of {records}: share of records whose real answer scores "
            "above the corrupted one"
        )
        typer.echo(f"  {'kind':<16}{'records':>8}  preferred")
        for kind, row in table.items():
            typer.echo(f"  {kind:<16}{row['records']:>8}  {row['preferred']:.3f}")
        if "foreign" not in table:
            typer.echo("  (foreign: not measured; pass --foreign with answers in another language)")


@app.command()
def info(bundle: BundleDir = None, device: Device = DeviceName.auto, threads: Threads = None):
    """Show the bundle, its models and precisions, the execution providers, threads and hardware."""
    import platform

    import onnxruntime as ort

    from .runtime.manifest import read_manifest

    config = resolve(device.value, threads)
    typer.echo(f"car-onnx {__version__}, onnxruntime {ort.__version__}, Python {platform.python_version()}")
    typer.echo(f"machine: {platform.machine()}, {machine_threads()} usable cores, {_cpu_flags()}")
    typer.echo(
        f"providers: {', '.join(ort.get_available_providers())}; device {config.device}, "
        f"threads {config.threads or machine_threads()}"
    )
    root = find_bundle(bundle)
    manifest = read_manifest(root)
    typer.echo(f"bundle: {root} ({manifest.created_by})")
    for m in manifest.models:
        typer.echo(
            f"  model {m.name}: roles {', '.join(m.roles)}; max_length {m.max_length}; "
            f"precisions {', '.join(m.variants)} (default here: {config.pick_precision(list(m.variants), m.name)})"
        )
        for p, v in m.variants.items():
            size = manifest.files[v.graph]["bytes"] + manifest.files.get(v.graph + ".data", {}).get("bytes", 0)
            extra = "; ".join(f"{k} {val}" for k, val in v.fidelity.items())
            typer.echo(f"    {p}: {v.graph} ({size / 2**20:.1f} MiB){'; ' + extra if extra else ''}")


def _cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "CPU flags unknown"
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
    return "CPU " + " ".join(f for f in wanted if f in flags)


@app.command()
def pack(
    output: Output,
    bundle: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--bundle",
            "-b",
            help="Bundle to carry, repeatable; the first becomes the default bundle on the target "
            "[default: the built default bundle]",
        ),
    ] = None,
    extras: Annotated[str, typer.Option(help="Extras to carry, comma-separated (e.g. parquet).")] = "",
    python_version: Annotated[Optional[str], typer.Option(help="Target CPython, e.g. 3.11 [default: this one]")] = None,
    platform: Annotated[
        Optional[str],
        typer.Option(help="Target wheel platform, e.g. manylinux_2_28_x86_64 [default: this machine's newest]"),
    ] = None,
    force: Force = False,
):
    """Build an offline install kit: the wheels car-onnx needs on the target, the bundle(s), kit.json, install.sh."""
    from .kit import pack as pack_kit

    typer.echo("car-onnx: building car-onnx's wheel and downloading the wheels it needs with pip ...", err=True)
    kit = pack_kit(
        output, bundle or [find_bundle(None)], [e for e in extras.split(",") if e], python_version, platform, force
    )
    typer.echo(
        f"car-onnx: wrote {kit.path}: {len(kit.wheels)} wheels {kit.wheels_mb} MB + bundles {kit.bundles_mb} MB "
        f"for {kit.requirement}, Python {kit.target.python_version}, {kit.target.platform}; sha256 {kit.sha256}"
    )
    typer.echo(f"car-onnx: on the target: tar xf {kit.path.name} && sh car-onnx-kit/install.sh", err=True)


@app.command()
def verify(
    bundle: Annotated[
        Optional[Path], typer.Argument(help="Bundle directory [default: the built default bundle]")
    ] = None,
):
    """Check the sha256 of every file of the bundle (not only those a run loads); name each wrong one."""
    from .runtime.manifest import verify_bundle  # faults

    root = find_bundle(bundle)
    typer.echo(f"{root}: all {verify_bundle(root)} files match the manifest's sha256")


@app.command()
def version():
    """Print the version."""
    typer.echo(__version__)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """CaR instruction-data selection on onnxruntime."""


HERE = Path(__file__).resolve().parent  # warnings raised from here are car-onnx's own
PLUGINS = "car_onnx.cli"  # entry-point group: callables that add commands to the app (the export tool is one)


def main() -> None:
    from importlib.metadata import entry_points

    for plugin in entry_points(group=PLUGINS):
        plugin.load()(app)
    _guard_all(app)
    app()
