"""The file jobs behind the CLI, on the Python API's Model. The input is one file or several (a directory or a glob:
its shards, read in order as one dataset). Each job reads it in passes, so memory does not grow with the dataset:
1. check: every option, the output's format, directory and optional dependency, before any record is read;
2. scan (scanning.py): validate every record (rejecting or failing), count them, note the columns, each record's
   place and the exact duplicates (on disk), and plan the inference chunks (never spanning two files);
3. infer: score/embed chunk by chunk, each finished chunk kept in the work directory (resumable);
4. cluster + select on the scores and the embeddings (memory-mapped; with --cluster sample read a block at a
   time from the work directory, the labels written there, the assignment of every row on the cluster under Ray:
   nothing of n rows in memory);
5. write: read the input again and write the output rows (and the rejects file).
Steps 2 and 3 run in this process, or on a Ray cluster (car_onnx.ray.RayEngine), with the same result."""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from . import lock
from .columns import Index
from .errors import UsageError
from .files import create_npy, remove_stale_temps, replacing
from .manifest import sha256_file as file_sha256
from .model import CHUNK_CHARS, Model
from .readers import SUFFIXES, check_format, check_input, detect_format, require_pyarrow
from .records import Record
from .rows import BLOCK_ROWS
from .scanning import Job, Scan, scan, shard_records
from .selection import SelectOptions, check_clustering
from .workdir import WorkDir
from .writers import directory_writers, open_writer

SCORE_FIELD, CLUSTER_FIELD = "score", "cluster"


class Stages:
    """Timing of each stage, a progress hook and a message hook, which the CLI replaces with bars or log lines."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def progress(self, name: str, total: int | None):
        return nullcontext(lambda n: None)

    def note(self, message: str) -> None:
        pass

    @contextmanager
    def stage(self, name: str, total: int | None = None):
        start = time.perf_counter()
        with self.progress(name, total) as advance:
            yield advance
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class RunSummary:
    """What a file job did, for the CLI's summary line (and `--show`)."""

    records: int
    selected: int = 0
    top: int = 0  # of the selected, how many from the n1 block (the rest are cluster picks)
    clusters: int = 0
    rejected: int = 0
    duplicates: dict = field(default_factory=dict)  # "exact" / "near" -> rows dropped before ranking
    rejects_path: Path | None = None
    seconds: dict = field(default_factory=dict)
    shown: list = field(default_factory=list)  # select(show=True): (row, record) of each selected row, in order


def _reread_records(job: Job, model: Model, scan: Scan, added: tuple[str, ...]) -> Iterator[tuple[int, Record]]:
    """The accepted records of every file, read again in input order, each with the index of its file."""
    for shard in range(len(job.shards)):
        for r in shard_records(job, model, scan.stamp[shard], added, shard):
            yield shard, r


def identity(job: Job, model: Model, roles: tuple[str, ...], added: tuple[str, ...]) -> dict:
    """Everything a chunk's results depend on (thread counts change only the last float bits: left out; so are
    the selection's parameters, which only re-cluster)."""
    fields = model.fields
    return {
        "bundle_manifest_sha256": file_sha256(model.bundle / "manifest.json"),
        "models": {model.manifest.model_for(r).name: p for r, p in model.precisions(roles).items()},
        "device": model.config.device,
        "input_sha256": [file_sha256(f) for f in job.shards],
        "input_format": job.fmt,
        "fields": [fields.instruction, fields.input, fields.output],
        "on_error": job.on_error,
        "refused_fields": sorted(added),
        "roles": list(roles),
        "max_tokens": model.max_tokens,
        "chunk_records": job.chunk_records,
        "chunk_chars": CHUNK_CHARS,
    }


def infer(
    job: Job, model: Model, roles: tuple[str, ...], scan_: Scan, added: tuple[str, ...], work: WorkDir, stages: Stages
) -> None:
    """Scores and/or embeddings of the accepted records, chunk by chunk into `work`; chunks finished by an
    earlier run with the same identity are reused."""
    passes = len({model.manifest.model_for(r).name for r in roles})  # one pass per distinct model
    records = (r for _, r in _reread_records(job, model, scan_, added))
    with stages.stage("+".join(roles), total=scan_.records * passes) as advance:
        for c, (_, _, size) in enumerate(scan_.plan):
            chunk = list(islice(records, size))
            if work.has(c, size):
                advance(size * passes)
            else:
                work.save(c, model.run(chunk, roles, advance))
    model.warn_unreadable()


@contextmanager
def work_dir(job: Job, model: Model, roles: tuple[str, ...], added: tuple[str, ...], stages: Stages):
    """The job's WorkDir: --work-dir (kept, for the job's identity) or a temporary one (deleted; nothing to
    compare, so the input is not hashed)."""
    if job.work_dir is not None:
        yield WorkDir.open(job.work_dir, identity(job, model, roles, added), stages.note)
        return
    with tempfile.TemporaryDirectory(prefix="car-onnx-") as tmp:
        yield WorkDir.open(Path(tmp), {"roles": list(roles)}, stages.note)


def _float(x) -> float:
    """A float32 as the shortest decimal that reads back to the same float32."""
    return float(str(np.float32(x)))


def output_format(output: Path, out_fmt: str | None) -> str:
    """The output's format: `out_fmt` if given, else the one its suffix names (an unknown suffix is an error)."""
    if out_fmt is not None:
        return check_format(out_fmt)
    fmt = SUFFIXES.get(Path(output).suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{output}: cannot tell the output format from the suffix (accepted: {', '.join(SUFFIXES)}); "
            "name the output so or pass {output_format}",
            "output_format",
        )
    return fmt


def output_files(job: Job, output: Path, fmt: str) -> list[str] | None:
    """The file names of a directory output (one per input file, holding its rows), or None for one file: a
    directory is written for Parquet output of an input of several files to a path with no suffix."""
    if fmt != "parquet" or len(job.shards) < 2 or (Path(output).suffix and not Path(output).is_dir()):
        return None
    names = [f"{shard.stem}.parquet" for shard in job.shards]
    if len(set(names)) < len(names):
        raise UsageError(
            f"{output}: input files share a name; the output directory would need two files of one "
            "name (write one file instead: name the output *.parquet)"
        )
    return names


def check_output(job: Job, output: Path, fmt: str, rejects_used: bool) -> Path | None:
    """Before any work: the output (and rejects file) may be written: not the input, not an existing file without
    --force, in an existing writable directory. Returns the rejects file's path, if the job may write one."""
    for shard in job.shards:
        check_input(shard)  # faults: an unreadable input fails here, before any model work
    rejects = (job.rejects or Path(f"{output}.rejects.jsonl")) if rejects_used else None
    if job.rejects is not None and not rejects_used:
        raise UsageError(
            "{rejects} goes with {on_error} skip (or, for select, a {dedup} other than none)",
            "rejects",
            "on_error",
            "dedup",
        )
    if rejects is not None and Path(rejects).resolve() == Path(output).resolve():
        raise UsageError(f"{rejects}: the rejects file and the output must differ")
    for path in (output, rejects) if rejects is not None else (output,):
        path = Path(path)
        if path.resolve() == Path(job.input).resolve() or any(path.resolve() == f.resolve() for f in job.shards):
            raise UsageError(f"{path}: the output would overwrite the input; choose another path")
        if path.exists() and not job.force:
            raise UsageError(f"{path}: already exists; pass {{force=True}} to replace it", "force=True")
        folder = path.parent
        if not folder.is_dir():
            raise UsageError(f"{path}: the directory {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{path}: the directory {folder} is not writable")
        for stale in remove_stale_temps(path):  # faults: left by a run killed while writing `path`
            warnings.warn(f"{stale}: removed, a temporary file left by an interrupted run")
    if "parquet" in (fmt, *(job.fmt or detect_format(shard) for shard in job.shards)):
        require_pyarrow()
    if job.work_dir is not None:
        WorkDir.check(job.work_dir)
    return rejects


@contextmanager
def _rejects_writer(job: Job, path: Path | None):
    """The rejects file (JSONL): written in full if anything was rejected, not at all if the job fails or nothing
    was (a stale one is removed with --force)."""
    if path is None:
        yield None
        return
    with open_writer(path, "jsonl", keep_empty=False) as writer:
        yield writer
    if writer.count == 0 and job.force:
        Path(path).unlink(missing_ok=True)


def _check_names(score_field: str, cluster_field: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    names = {"score_field": score_field, "cluster_field": cluster_field}
    for option, name in names.items():
        if not isinstance(name, str) or not name:
            raise UsageError(f"{{{option}}} must be a non-empty name, got {name!r}", option)
        if name in extra:
            raise UsageError(f"{{{option}}} {name!r} is a field the output adds itself; choose another name", option)
    if score_field == cluster_field:
        raise UsageError("{score_field} and {cluster_field} must differ", "score_field", "cluster_field")
    return (score_field, cluster_field, *extra)


@runtime_checkable
class Engine(Protocol):
    """Where a file job's scan and inference run, and how the selection reads the embeddings: LocalEngine (this
    process) or car_onnx.ray.RayEngine (a Ray cluster). The selection itself is the same either way."""

    def scan(
        self, job: Job, model: Model, added: tuple[str, ...], rejects, stages: Stages, index: Index
    ) -> Scan: ...  # every record checked and counted (scanning.scan)

    def infer(
        self,
        job: Job,
        model: Model,
        roles: tuple[str, ...],
        found: Scan,
        added: tuple[str, ...],
        work: WorkDir,
        stages: Stages,
    ) -> None: ...  # every chunk's outputs saved in `work` (infer)

    def rows(self, embeddings, stages: Stages): ...  # the embeddings as car_select reads them


class LocalEngine:
    """Scan, inference and clustering in this process."""

    def scan(self, job, model, added, rejects, stages, index) -> Scan:
        return scan(job, model, added, rejects, stages, index)

    def infer(self, job, model, roles, found, added, work, stages) -> None:
        infer(job, model, roles, found, added, work, stages)

    def rows(self, embeddings, stages):
        return embeddings


def select(
    job: Job,
    model: Model,
    output: Path,
    *,
    options: SelectOptions | None = None,
    write_all=False,
    out_fmt=None,
    score_field=SCORE_FIELD,
    cluster_field=CLUSTER_FIELD,
    stages: Stages | None = None,
    report_path: Path | None = None,
    engine: Engine | None = None,
    show=False,
) -> RunSummary:
    """`car-onnx select`: the CaR selection of the input, each selected record written with its score, cluster,
    rank and the reason it was kept ("top" or "cluster"); with `write_all`, every record, `selected` or not.
    `engine` (default: LocalEngine) runs the scan and the inference; the selection is the same. With `show`, the
    RunSummary's `shown` holds each selected (row, record), for the CLI's --show. `options`: the selection's
    (SelectOptions.parse(); its defaults when None)."""
    stages, engine = stages or Stages(), engine or LocalEngine()
    options = options or SelectOptions.parse()
    dedup = options.dedup
    extra = ("rank", "selected", "reason") if write_all else ("rank", "reason")
    added = _check_names(score_field, cluster_field, extra)
    fmt = output_format(output, out_fmt)
    rejects_path = check_output(job, output, fmt, job.on_error == "skip" or dedup.exact)
    output_files(job, output, fmt)
    clusterer = options.clusterer()
    clusterer.check()
    if report_path is not None:  # --report (car_onnx/report.py): checked before any work
        from . import report as curation

        curation.require()
        curation.check_path(report_path, job.force)
    roles = ("score", "embed")
    with (
        lock.held(job.work_dir),
        _rejects_writer(job, rejects_path) as rejects,
        tempfile.TemporaryDirectory(prefix="car-onnx-index-") as index,
    ):  # the scan's per-record facts
        found = engine.scan(job, model, added, rejects, stages, Index(Path(index), dedup.exact))
        ranked = found.records - (found.duplicates or 0)
        check_clustering(clusterer, ranked, dedup.near)
        with work_dir(job, model, roles, added, stages) as work:
            engine.infer(job, model, roles, found, added, work, stages)
            sampled = clusterer.sampled(ranked)  # scores and labels stay on disk, in the work dir
            out = work.assemble(found.records, in_chunks=sampled)
            embeddings = engine.rows(out["embed"], stages)
            with stages.stage("cluster+select"):
                sel = options.select(
                    out["score"],
                    embeddings,
                    duplicate_of=found.duplicate_of,
                    log=stages.note,
                    labels=work.column("labels", found.records, "int64") if sampled else None,
                )
            del out, embeddings
            page = None
            if report_path is not None:  # the report reads every row's score, cluster and duplicate: in memory
                sel = dataclasses.replace(
                    sel,
                    scores=np.asarray(sel.scores[:]),
                    labels=np.asarray(sel.labels[:]),
                    duplicate_of=np.asarray(sel.duplicate_of[:]),
                )
                page = curation.Run({}, {}, np.zeros(found.records, dtype=np.int64))
            report = _write_selection(
                job, model, output, fmt, found, sel, added, write_all, rejects, stages, page, show
            )
    report.rejects_path = rejects_path if rejects is not None and rejects.count else None
    if page is not None:  # --report: the page, from what the write pass collected
        with stages.stage("report"):
            page.input, page.records, page.rejected, page.duplicates = (
                str(job.input),
                found.records,
                found.rejected,
                report.duplicates or {"exact": 0, "near": 0},
            )
            page.n1, page.n2, page.dedup, page.seconds = (
                str(options.n1),
                str(options.n2),
                str(dedup),
                dict(stages.seconds),
            )
            page.bundle = curation.bundle_info(model)
            curation.write(report_path, sel, page)
    return report


def _write_selection(
    job, model, output, fmt, found: Scan, sel, added, write_all, rejects, stages, page=None, show=False
) -> RunSummary:
    """The write pass: the input read again, the output rows written (and each dropped duplicate to the rejects
    file). Per-record facts are read a block of rows at a time (in sample mode they are on disk), and the selected
    rows wait in a temporary file to be written in selection order: memory holds neither n rows nor the selected
    records."""
    score_field, cluster_field = added[:2]
    order = np.argsort(sel.indices, kind="stable")  # the selection in input order: chosen[j] is at place order[j]
    chosen = np.asarray(sel.indices)[order]
    if write_all:  # every row's rank, score and cluster, by row
        ranks, scores, labels = sel.ranks, np.asarray(sel.scores[:]), np.asarray(sel.labels[:])
    else:  # the selected rows', by place in `chosen`
        ranks, scores, labels = sel.ranks_of(chosen), sel.scores[chosen], sel.labels[chosen]
    if page is not None:
        from . import report as curation

        want = curation.wanted(sel)

    def row(i: int, r: Record, j: int | None) -> dict:
        at = i if write_all else j
        out = {**r.row, score_field: _float(scores[at]), cluster_field: int(labels[at]), "rank": int(ranks[at]) or None}
        if write_all:
            out["selected"] = j is not None
        out["reason"] = None if j is None else "top" if order[j] < sel.n_top else "cluster"
        return out

    columns = (*found.columns, *added) if write_all else None  # all rows: the header is known, CSV streams
    offsets, repeats, j = np.zeros(len(chosen), dtype=np.int64), 0, 0
    with (
        stages.stage("write", total=found.records) as advance,
        _writers(job, output, fmt, columns) as writer,
        tempfile.TemporaryFile() as held,
    ):
        for i, (shard, r) in enumerate(_reread_records(job, model, found, added)):
            if i % BLOCK_ROWS == 0:  # the next block's duplicates, and where the records they repeat are
                dup = np.asarray(sel.duplicate_of[i : i + BLOCK_ROWS])
                originals = np.unique(dup[dup >= 0]) if rejects is not None else ()
                named = dict(zip(np.asarray(originals).tolist(), found.wheres(job, originals)))
                exact = dup if sel.duplicate_of is found.duplicate_of else found.duplicate_of[i : i + BLOCK_ROWS]
                repeats += int((dup >= 0).sum())
            original = int(dup[i % BLOCK_ROWS])
            if original >= 0 and rejects is not None:
                rejects.write(
                    {
                        "where": job.where(shard, r.where),
                        "reason": "duplicate_of",
                        "duplicate_of": named[original],
                        "kind": "exact" if exact[i % BLOCK_ROWS] >= 0 else "near",
                        "record": r.row,
                    }
                )
            picked = j if j < len(chosen) and chosen[j] == i else None
            if write_all:
                writer(shard).write(row(i, r, picked))
            if picked is not None:
                offsets[order[j]], j = held.tell(), j + 1
                pickle.dump((row(i, r, picked), r, shard), held)
            if page is not None:  # --report: text lengths, and the texts the page shows
                text = model.text(r.instruction, r.input, r.output)
                page.lengths[i] = len(text)
                if i in want:
                    page.texts[i], page.where[i] = curation.clip(text), job.where(shard, r.where)
            advance(1)
        shown = []
        for offset in offsets if show or not write_all else ():  # in selection order
            held.seek(offset)
            out, r, shard = pickle.load(held)
            if not write_all:
                writer(shard).write(out)
            if show:
                shown.append((out, r))
    duplicates = {"exact": found.duplicates, "near": repeats - found.duplicates} if found.duplicates is not None else {}
    if duplicates and rejects is not None and repeats:
        stages.note(f"{repeats} duplicate(s) dropped before ranking, written to {rejects.path}")
    return RunSummary(
        found.records,
        len(sel.indices),
        sel.n_top,
        sel.k,
        found.rejected,
        duplicates,
        seconds=stages.seconds,
        shown=shown,
    )


@contextmanager
def _writers(job: Job, output: Path, fmt: str, columns):
    """`writer(file index)`: where the output rows of that input file go (one file, or a directory's files)."""
    names = output_files(job, output, fmt)
    if names is None:
        with open_writer(output, fmt, columns) as writer:
            yield lambda shard: writer
    else:
        with directory_writers(output, names, fmt, columns) as writer:
            yield writer


def score(
    job: Job, model: Model, output: Path, *, out_fmt=None, score_field=SCORE_FIELD, stages: Stages | None = None
) -> RunSummary:
    """`car-onnx score`: every record with its quality score, in input order."""
    stages = stages or Stages()
    if not isinstance(score_field, str) or not score_field:
        raise UsageError(f"{{score_field}} must be a non-empty name, got {score_field!r}", "score_field")
    fmt = output_format(output, out_fmt)
    rejects_path = check_output(job, output, fmt, job.on_error == "skip")
    added, roles = (score_field,), ("score",)
    with lock.held(job.work_dir), _rejects_writer(job, rejects_path) as rejects:
        found = scan(job, model, added, rejects, stages)
        with work_dir(job, model, roles, added, stages) as work:
            infer(job, model, roles, found, added, work, stages)
            scores = work.assemble(found.records)["score"]
        with (
            stages.stage("write", total=found.records) as advance,
            open_writer(output, fmt, (*found.columns, *added)) as writer,
        ):
            for i, (_, r) in enumerate(_reread_records(job, model, found, added)):
                writer.write({**r.row, score_field: _float(scores[i])})
                advance(1)
    return RunSummary(found.records, rejected=found.rejected, seconds=stages.seconds)


def embed(job: Job, model: Model, output: Path, *, stages: Stages | None = None) -> RunSummary:
    """`car-onnx embed`: a float32 .npy of sentence embeddings, one row per record in input order."""
    stages = stages or Stages()
    if Path(output).suffix != ".npy":
        raise UsageError(f"{output}: embeddings are written as .npy; name the output *.npy")
    rejects_path = check_output(job, output, "npy", job.on_error == "skip")
    roles = ("embed",)
    with lock.held(job.work_dir), _rejects_writer(job, rejects_path) as rejects:
        found = scan(job, model, (), rejects, stages)
        with work_dir(job, model, roles, (), stages) as work:
            infer(job, model, roles, found, (), work, stages)
            vectors = work.assemble(found.records)["embed"]
            with stages.stage("write"), replacing(output) as tmp:
                target = create_npy(tmp, vectors.shape)  # faults: space reserved, a full disk is an error
                target[:] = vectors
                target.flush()
                del target
    return RunSummary(found.records, rejected=found.rejected, seconds=stages.seconds)
