"""The `car-onnx` command: thin typer commands over the Python API. Errors become one line on stderr."""

from __future__ import annotations

import os
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__, pipeline
from .bundle import Bundle, find_bundle
from .errors import CarError, UsageError
from .io import FORMATS, FieldMap
from .session import machine_threads, resolve
from .tokenization import DEFAULT_MAX_TOKENS

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None, help="CaR instruction-data selection on onnxruntime.")

Input = Annotated[Path, typer.Argument(help="Dataset: .json (array), .jsonl, .csv or .parquet.", show_default=False)]
Output = Annotated[Path, typer.Option("--output", "-o", help="Where to write the result.", show_default=False)]
BundleDir = Annotated[Optional[Path], typer.Option("--bundle", "-b", help="Bundle directory [default: the built default bundle]")]
Device = Annotated[str, typer.Option(help="cpu, cuda, or auto (CUDA when onnxruntime offers it).")]
Threads = Annotated[Optional[int], typer.Option(help="Threads per session [default: the cores this process may use]")]
Precision = Annotated[Optional[str], typer.Option(help="fp32, int8 or fp16 [default: int8 on CPU, fp16 on CUDA]")]
InFormat = Annotated[Optional[str], typer.Option("--format", help=f"Input format, one of {', '.join(FORMATS)} [default: by suffix]")]
OutFormat = Annotated[Optional[str], typer.Option("--output-format", help="Output format [default: the input's]")]
Fields = Annotated[Optional[list[str]], typer.Option("--field", help="Map a field: instruction=question, output=answer, input=context.")]
MaxTokens = Annotated[int, typer.Option(help="Token budget of one batch (rows x longest row); int8 runs one text per batch.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, messages or summary.")]
WorkDirOpt = Annotated[Optional[Path], typer.Option("--work-dir", help="Keep finished chunks here; a run started again with the same arguments resumes [default: a temporary directory].")]
OnError = Annotated[str, typer.Option("--on-error", help="fail: stop at the first bad record; skip: write bad records to the rejects file and go on.")]
Rejects = Annotated[Optional[Path], typer.Option("--rejects", help="Rejects file (JSONL) for --on-error skip [default: OUTPUT.rejects.jsonl].")]
ChunkRecords = Annotated[int, typer.Option("--chunk-records", help="Records per inference chunk (the unit --work-dir keeps).")]


class BarStages(pipeline.Stages):
    """Stages with a rich progress bar per stage on stderr."""

    def __init__(self, quiet: bool):
        super().__init__()
        self.quiet = quiet

    @contextmanager
    def progress(self, name, total):
        if self.quiet or total is None:  # stages without a count show only in the closing summary
            yield lambda n: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = [TextColumn(f"{name:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(name, total=total)
            yield lambda n: bar.advance(task, n)
            bar.update(task, completed=total)

    def note(self, message):
        if not self.quiet:
            typer.echo(f"car-onnx: {message}", err=True)


def _run(fn):
    """Call `fn`; a CarError (or any error) becomes one line on stderr and exit code 1 (2 for usage)."""
    try:
        return fn()
    except CarError as err:
        if os.environ.get("CAR_ONNX_DEBUG") == "1":
            traceback.print_exc()
        typer.echo(f"car-onnx: error: {err}", err=True)
        raise typer.Exit(2 if isinstance(err, UsageError) else 1) from None
    except KeyboardInterrupt:
        typer.echo("car-onnx: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as err:
        if os.environ.get("CAR_ONNX_DEBUG") == "1":
            raise
        typer.echo(f"car-onnx: internal error: {type(err).__name__}: {err} (set CAR_ONNX_DEBUG=1 for the traceback)",
                   err=True)
        raise typer.Exit(1) from None


def _job(input, fmt, fields, max_tokens, force, work_dir, on_error, rejects, chunk_records) -> pipeline.Job:
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {max_tokens}")
    if rejects is not None and on_error != "skip":
        raise UsageError("--rejects goes with --on-error skip")
    return pipeline.Job(Path(input), fmt, FieldMap.parse(fields or []), max_tokens, force, work_dir, on_error,
                        rejects, chunk_records)


def _bundle(bundle, device, threads, precision, roles) -> Bundle:
    return Bundle(find_bundle(bundle), resolve(device, threads, precision), roles)


def _summary(report: pipeline.Report, quiet: bool, output: Path) -> None:
    if quiet:
        return
    parts = [f"{report.records} records"]
    if report.rejected:
        parts.append(f"{report.rejected} rejected")
    if report.selected:
        parts.append(f"{report.selected} selected ({100 * report.selected / report.records:.2f}%)")
        parts.append(f"{report.clusters} clusters")
    times = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    typer.echo(f"car-onnx: {'; '.join(parts)}; wrote {output} [{times}]", err=True)
    for warning in report.warnings:
        typer.echo(f"car-onnx: warning: {warning}", err=True)


@app.command()
def select(
    input: Input, output: Output, bundle: BundleDir = None,
    n1: Annotated[str, typer.Option(help="Top records overall: a count or a percentage (2%).")] = "1000",
    n2: Annotated[str, typer.Option(help="Top records per cluster.")] = "1",
    k: Annotated[Optional[int], typer.Option(help="Clusters [default: int(sqrt(n/2))].")] = None,
    pca_variance: Annotated[float, typer.Option(help="Variance PCA keeps before clustering.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of PCA and KMeans.")] = 42,
    all: Annotated[bool, typer.Option("--all", help="Write every record (input order) with score and cluster.")] = False,
    device: Device = "auto", threads: Threads = None, precision: Precision = None, format: InFormat = None,
    output_format: OutFormat = None, field: Fields = None, max_tokens: MaxTokens = DEFAULT_MAX_TOKENS, force: Force = False,
    quiet: Quiet = False, work_dir: WorkDirOpt = None, on_error: OnError = "fail", rejects: Rejects = None,
    chunk_records: ChunkRecords = pipeline.CHUNK_RECORDS,
    show: Annotated[bool, typer.Option("--show", help="Print the selected records (score, cluster, text).")] = False,
):
    """Select the CaR subset: top n1 by quality score plus the top n2 of every embedding cluster."""
    def go():
        job = _job(input, format, field, max_tokens, force, work_dir, on_error, rejects, chunk_records)
        model = _bundle(bundle, device, threads, precision, ("score", "embed"))
        return pipeline.select(job, model, output, n1=n1, n2=n2, k=k, pca_variance=pca_variance, seed=seed,
                               write_all=all, out_fmt=output_format, stages=BarStages(quiet))
    report = _run(go)
    if show:
        _show(report.selected_rows, field)
    _summary(report, quiet, output)


def _show(rows: list[dict], fields) -> None:
    """One line per selected record: its rank, score, cluster, instruction and the start of its answer."""
    names = FieldMap.parse(fields or [])

    def clip(value, width):
        text = " ".join(str(value).split())
        return text if len(text) <= width else text[: width - 1] + "…"

    typer.echo(f"{'#':>4}  {'score':>8}  {'cluster':>7}  instruction / output")
    for rank, row in enumerate(rows, 1):
        typer.echo(f"{rank:>4}  {row['score']:>8.4f}  {row['cluster']:>7}  {clip(row.get(names.instruction, ''), 60)}"
                   f" -> {clip(row.get(names.output, ''), 50)}")


@app.command()
def score(
    input: Input, output: Output, bundle: BundleDir = None, device: Device = "auto", threads: Threads = None,
    precision: Precision = None, format: InFormat = None, output_format: OutFormat = None, field: Fields = None,
    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS, force: Force = False, quiet: Quiet = False,
    work_dir: WorkDirOpt = None, on_error: OnError = "fail", rejects: Rejects = None,
    chunk_records: ChunkRecords = pipeline.CHUNK_RECORDS,
):
    """Write every record with its quality score."""
    def go():
        job = _job(input, format, field, max_tokens, force, work_dir, on_error, rejects, chunk_records)
        model = _bundle(bundle, device, threads, precision, ("score",))
        return pipeline.score(job, model, output, out_fmt=output_format, stages=BarStages(quiet))
    _summary(_run(go), quiet, output)


@app.command()
def embed(
    input: Input, output: Output, bundle: BundleDir = None, device: Device = "auto", threads: Threads = None,
    precision: Precision = None, format: InFormat = None, field: Fields = None, max_tokens: MaxTokens = DEFAULT_MAX_TOKENS,
    force: Force = False, quiet: Quiet = False,
    work_dir: WorkDirOpt = None, on_error: OnError = "fail", rejects: Rejects = None,
    chunk_records: ChunkRecords = pipeline.CHUNK_RECORDS,
):
    """Write sentence embeddings as a float32 .npy, one row per record in input order."""
    def go():
        job = _job(input, format, field, max_tokens, force, work_dir, on_error, rejects, chunk_records)
        model = _bundle(bundle, device, threads, precision, ("embed",))
        return pipeline.embed(job, model, output, stages=BarStages(quiet))
    _summary(_run(go), quiet, output)


@app.command()
def info(bundle: BundleDir = None, device: Device = "auto", threads: Threads = None):
    """Show the bundle, its models and precisions, the execution providers, threads and hardware."""
    def go():
        import platform

        import onnxruntime as ort

        from .manifest import read_manifest

        config = resolve(device, threads)
        typer.echo(f"car-onnx {__version__}, onnxruntime {ort.__version__}, Python {platform.python_version()}")
        typer.echo(f"machine: {platform.machine()}, {machine_threads()} usable cores, {_cpu_flags()}")
        typer.echo(f"providers: {', '.join(ort.get_available_providers())}; device {config.device}, "
                   f"threads {config.threads or machine_threads()}")
        root = find_bundle(bundle)
        manifest = read_manifest(root)
        typer.echo(f"bundle: {root} ({manifest.created_by})")
        for m in manifest.models:
            typer.echo(f"  model {m.name}: roles {', '.join(m.roles)}; max_length {m.max_length}; "
                       f"precisions {', '.join(m.variants)} (default here: {config.pick_precision(list(m.variants), m.name)})")
            for p, v in m.variants.items():
                size = manifest.files[v.graph]["bytes"] + manifest.files.get(v.graph + ".data", {}).get("bytes", 0)
                extra = "; ".join(f"{k} {val}" for k, val in v.fidelity.items())
                typer.echo(f"    {p}: {v.graph} ({size / 2**20:.1f} MiB){'; ' + extra if extra else ''}")
    _run(go)


def _cpu_flags() -> str:
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "CPU flags unknown"
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
    return "CPU " + " ".join(f for f in wanted if f in flags)


@app.command()
def version():
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    # The export commands live in car_onnx_export; its cli module imports only typer (torch etc. are imported
    # inside the commands, which say how to install the [export] extra when it is missing).
    from car_onnx_export.cli import app as export_app, train_scorer

    app.add_typer(export_app)
    app.command("train-scorer")(train_scorer)
    app()
