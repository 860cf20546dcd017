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
import tempfile
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..api import CHUNK_CHARS, Model
from ..core.columns import Index
from ..core.files import create_npy, replacing
from ..core.selection import SelectOptions, check_clustering
from ..errors import UsageError
from ..io.writers import open_writer
from ..runtime.manifest import sha256_file as file_sha256
from ..runtime.reading import READING
from . import lock
from .outputs import check_names, check_output, output_files, output_format, rejects_writer, shortest
from .scanning import Job, Scan, reread_records, scan
from .stages import RunSummary, Stages
from .workdir import WorkDir
from .write import Target, write_selection

SCORE_FIELD, CLUSTER_FIELD = "score", "cluster"


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
        "turns": model.options.turns,
        "reading": READING,
        "chunk_records": job.chunk_records,
        "chunk_chars": CHUNK_CHARS,
    }


def infer(
    job: Job, model: Model, roles: tuple[str, ...], scan_: Scan, added: tuple[str, ...], work: WorkDir, stages: Stages
) -> None:
    """Scores and/or embeddings of the accepted records, chunk by chunk into `work`; chunks finished by an
    earlier run with the same identity are reused."""
    passes = len({model.manifest.model_for(r).name for r in roles})  # one pass per distinct model
    records = (r for _, r in reread_records(job, model, scan_, added))
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
    added = check_names(score_field, cluster_field, extra)
    fmt = output_format(output, out_fmt)
    rejects_path = check_output(job, output, fmt, job.on_error == "skip" or dedup.exact)
    output_files(job, output, fmt)
    clusterer = options.clusterer()
    clusterer.check()
    if report_path is not None:  # --report (car_onnx/io/report.py): checked before any work
        from ..io import report as curation

        curation.require()
        curation.check_path(report_path, job.force)
    roles = ("score", "embed")
    with (
        lock.held(job.work_dir),
        rejects_writer(job, rejects_path) as rejects,
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
            texts = None
            if report_path is not None:  # the report reads every row's score, cluster and duplicate: in memory
                sel = dataclasses.replace(
                    sel,
                    scores=np.asarray(sel.scores[:]),
                    labels=np.asarray(sel.labels[:]),
                    duplicate_of=np.asarray(sel.duplicate_of[:]),
                )
                n = found.records  # the page's texts, places, lengths, exchanges and windows
                texts = ({}, {}, np.zeros(n, dtype=np.int64), np.zeros((n, 2), dtype=np.int64))
            target = Target(output, fmt, added, write_all, show)
            summary = write_selection(job, model, found, sel, target, rejects, stages, texts)
    summary.rejects_path = rejects_path if rejects is not None and rejects.count else None
    if texts is not None:  # --report: the page, from what the write pass collected
        with stages.stage("report"):
            page = curation.Run(
                *texts,
                input=str(job.input),
                records=found.records,
                rejected=found.rejected,
                duplicates=summary.duplicates or {"exact": 0, "near": 0},
                n1=str(options.n1),
                n2=str(options.n2),
                dedup=str(dedup),
                bundle=curation.bundle_info(model),
                seconds=dict(stages.seconds),
            )
            curation.write(report_path, sel, page)
    return summary


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
    with lock.held(job.work_dir), rejects_writer(job, rejects_path) as rejects:
        found = scan(job, model, added, rejects, stages)
        with work_dir(job, model, roles, added, stages) as work:
            infer(job, model, roles, found, added, work, stages)
            scores = work.assemble(found.records)["score"]
        with (
            stages.stage("write", total=found.records) as advance,
            open_writer(output, fmt, (*found.columns, *added)) as writer,
        ):
            for i, (_, r) in enumerate(reread_records(job, model, found, added)):
                writer.write({**r.row, score_field: shortest(scores[i])})
                advance(1)
    return RunSummary(found.records, rejected=found.rejected, seconds=stages.seconds)


def embed(job: Job, model: Model, output: Path, *, stages: Stages | None = None) -> RunSummary:
    """`car-onnx embed`: a float32 .npy of sentence embeddings, one row per record in input order."""
    stages = stages or Stages()
    if Path(output).suffix != ".npy":
        raise UsageError(f"{output}: embeddings are written as .npy; name the output *.npy")
    rejects_path = check_output(job, output, "npy", job.on_error == "skip")
    roles = ("embed",)
    with lock.held(job.work_dir), rejects_writer(job, rejects_path) as rejects:
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
