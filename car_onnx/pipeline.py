"""The jobs behind the CLI. Each reads its input in passes, so memory does not grow with the dataset:
1. scan: validate every record (rejecting or failing), count them, note the columns;
2. infer: score/embed chunk by chunk, each finished chunk kept in the work directory (resumable);
3. cluster + select on the scores and the memory-mapped embeddings;
4. write: read the input again and write the output rows."""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .bundle import Bundle
from .clustering import Clusterer
from .coverage import coverage_warnings
from .errors import InputError, UsageError
from .io import FieldMap, Record, detect_format, iter_records, open_writer, replacing
from .selection import car_select, parse_size
from .tokenization import DEFAULT_MAX_TOKENS
from .manifest import sha256_file as file_sha256
from .workdir import WorkDir

SCORE_FIELD, CLUSTER_FIELD = "score", "cluster"
CHUNK_RECORDS = 4096  # records per inference chunk: the unit a resumed run reuses
CHUNK_CHARS = 32 << 20  # and at most this many characters of text per chunk, whatever the records' sizes
ON_ERROR = ("fail", "skip")


class Stages:
    """Timing of each stage, a progress hook and a message hook, which the CLI replaces with bars and stderr."""

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
class Report:
    records: int
    selected: int = 0
    clusters: int = 0
    rejected: int = 0
    seconds: dict = field(default_factory=dict)
    selected_rows: list = field(default_factory=list)  # select: the chosen rows, in selection order
    warnings: list = field(default_factory=list)  # e.g. a bundle that cannot read the data's language


@dataclass(frozen=True)
class Job:
    """Options shared by every command."""

    input: Path
    fmt: str | None = None
    fields: FieldMap = FieldMap()
    max_tokens: int = DEFAULT_MAX_TOKENS
    force: bool = False  # replace an existing output
    work_dir: Path | None = None  # keep finished chunks here and reuse them (else a temporary directory)
    on_error: str = "fail"  # or "skip": bad records go to the rejects file
    rejects: Path | None = None  # where skipped records are written [default: OUTPUT.rejects.jsonl]
    chunk_records: int = CHUNK_RECORDS

    def __post_init__(self):
        if self.on_error not in ON_ERROR:
            raise UsageError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.chunk_records < 1:
            raise UsageError(f"--chunk-records must be >= 1, got {self.chunk_records}")


@dataclass(frozen=True)
class Scan:
    records: int
    columns: tuple[str, ...]  # every key of the accepted rows, in order of first appearance
    rejected: int
    stamp: tuple  # the input's size and mtime when the scan began


def _stamp(path: Path) -> tuple:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _records(job: Job, added: tuple[str, ...], reject=None) -> Iterator[Record]:
    """The accepted records; a record that already has a field the output adds is refused (or rejected)."""
    for r in iter_records(job.input, fmt=job.fmt, fields=job.fields, reject=reject):
        taken = next((name for name in added if name in r.row), None)
        if taken is None:
            yield r
            continue
        err = InputError(job.input, r.where, f"already has a field '{taken}' that the output would overwrite",
                         field=taken)
        if reject is None:
            raise err
        reject(err, r.row)


def _again(job: Job, scan: Scan, added: tuple[str, ...]) -> Iterator[Record]:
    """The accepted records read again (bad ones dropped silently: the scan has reported them)."""
    if _stamp(job.input) != scan.stamp:
        raise InputError(job.input, None, "changed while the job was running; run it again")
    skip = (lambda err, raw: None) if job.on_error == "skip" else None
    yield from _records(job, added, skip)


def scan(job: Job, added: tuple[str, ...], rejects, stages: Stages) -> Scan:
    """Validate and count every record before any work; rejected ones go to the `rejects` writer."""
    stamp = _stamp(job.input)
    count, rejected, columns = 0, 0, {}

    def reject(err: InputError, raw) -> None:
        nonlocal rejected
        rejected += 1
        rejects.write({"where": err.where, "field": err.field, "error": err.reason, "record": raw})

    with stages.stage("read"):
        try:
            for r in _records(job, added, reject if job.on_error == "skip" else None):
                count += 1
                columns.update(dict.fromkeys(r.row))
        except InputError as err:
            if not (rejected and err.where is None and err.reason == "no records"):
                raise
    if count == 0:
        raise InputError(job.input, None, f"no records left: all {rejected} were rejected")
    if job.on_error == "skip" and rejected:
        stages.note(f"{rejected} record(s) rejected, written to {rejects.path}")
    return Scan(count, tuple(columns), rejected, stamp)


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk, chars = [], 0
    for r in records:
        chunk.append(r)
        chars += len(r.instruction) + len(r.input) + len(r.output)
        if len(chunk) == size or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def identity(job: Job, bundle: Bundle, roles: tuple[str, ...], added: tuple[str, ...]) -> dict:
    """Everything a chunk's results depend on (thread counts change only the last float bits: left out)."""
    return {"bundle_manifest_sha256": file_sha256(bundle.root / "manifest.json"),
            "models": {m.spec.name: m.precision for m in bundle.models.values()},
            "device": bundle.config.device, "input_sha256": file_sha256(job.input), "input_format": job.fmt,
            "fields": [job.fields.instruction, job.fields.input, job.fields.output], "on_error": job.on_error,
            "refused_fields": list(added), "roles": list(roles), "max_tokens": job.max_tokens,
            "chunk_records": job.chunk_records, "chunk_chars": CHUNK_CHARS}


def infer(job: Job, bundle: Bundle, roles: tuple[str, ...], scan_: Scan, added: tuple[str, ...], work: WorkDir,
          stages: Stages) -> dict[str, np.ndarray]:
    """Scores ([n]) and/or embeddings ([n, dim], memory-mapped) of the accepted records, chunk by chunk; chunks
    finished by an earlier run with the same identity are reused."""
    passes = len({id(bundle.models[r]) for r in roles})  # one pass per distinct model
    with stages.stage("+".join(roles), total=scan_.records * passes) as advance:
        for c, chunk in enumerate(_chunks(_again(job, scan_, added), job.chunk_records)):
            if work.has(c, len(chunk)):
                advance(len(chunk) * passes)
            else:
                work.save(c, bundle.run(chunk, roles, job.max_tokens, advance))
    return work.assemble(scan_.records)


@contextmanager
def work_dir(job: Job, ident: dict, stages: Stages):
    """The job's WorkDir: --work-dir (kept) or a temporary one (deleted)."""
    if job.work_dir is not None:
        yield WorkDir.open(job.work_dir, ident, stages.note)
        return
    with tempfile.TemporaryDirectory(prefix="car-onnx-") as tmp:
        yield WorkDir.open(Path(tmp), ident, stages.note)


def _float(x) -> float:
    """A float32 as the shortest decimal that reads back to the same float32."""
    return float(str(np.float32(x)))


def output_format(job: Job, out_fmt: str | None) -> str:
    return out_fmt or job.fmt or detect_format(job.input)


def check_output(job: Job, output: Path) -> Path:
    """Refuse to overwrite the input, or an existing file without --force, before any work is done; returns
    the rejects file's path."""
    rejects = job.rejects or Path(f"{output}.rejects.jsonl")
    for path in (output, rejects) if job.on_error == "skip" else (output,):
        if Path(path).resolve() == Path(job.input).resolve():
            raise UsageError(f"{path}: the output would overwrite the input; choose another path")
        if Path(path).exists() and not job.force:
            raise UsageError(f"{path}: already exists; pass --force to replace it")
    if job.on_error == "skip" and Path(rejects).resolve() == Path(output).resolve():
        raise UsageError(f"{rejects}: the rejects file and the output must differ")
    return rejects


@contextmanager
def _rejects_writer(job: Job, path: Path):
    """The rejects file (JSONL) with --on-error skip: written in full, or not at all if the job fails."""
    if job.on_error != "skip":
        yield None
        return
    with open_writer(path, "jsonl") as writer:
        yield writer


def select(job: Job, bundle: Bundle, output: Path, *, n1="1000", n2="1", k=None, pca_variance=0.95, seed=42,
           write_all=False, out_fmt=None, stages: Stages | None = None) -> Report:
    """`car-onnx select`: the CaR selection of the input, written with `score` and `cluster` per record."""
    stages = stages or Stages()
    rejects_path = check_output(job, output)
    fmt = output_format(job, out_fmt)
    added, roles = (SCORE_FIELD, CLUSTER_FIELD), ("score", "embed")
    with _rejects_writer(job, rejects_path) as rejects:
        found = scan(job, added, rejects, stages)
        n = found.records
        n1, n2 = parse_size(n1, n, "n1"), parse_size(n2, n, "n2")
        Clusterer(k, pca_variance=pca_variance, seed=seed).check(n)
        with work_dir(job, identity(job, bundle, roles, added), stages) as work:
            out = infer(job, bundle, roles, found, added, work, stages)
            with stages.stage("cluster+select"):
                sel = car_select(out["score"], out["embed"], n1=n1, n2=n2, k=k, pca_variance=pca_variance,
                                 seed=seed)
            scores, labels = out["score"], sel.labels
            del out

        def row(i: int, r: Record) -> dict:
            return {**r.row, SCORE_FIELD: _float(scores[i]), CLUSTER_FIELD: int(labels[i])}

        columns = (*found.columns, *added) if write_all else None  # all rows: the header is known, CSV streams
        with stages.stage("write"), open_writer(output, fmt, columns) as writer:
            if write_all:
                for i, r in enumerate(_again(job, found, added)):
                    writer.write(row(i, r))
                chosen = {}
            else:
                wanted = set(sel.indices.tolist())
                chosen = {i: row(i, r) for i, r in enumerate(_again(job, found, added)) if i in wanted}
                for i in sel.indices:
                    writer.write(chosen[int(i)])
    return Report(n, len(sel.indices), int(labels.max()) + 1, found.rejected, stages.seconds,
                  [chosen[int(i)] for i in sel.indices] if chosen else [], coverage_warnings(bundle.models.values()))


def score(job: Job, bundle: Bundle, output: Path, *, out_fmt=None, stages: Stages | None = None) -> Report:
    """`car-onnx score`: every record with its quality score, in input order."""
    stages = stages or Stages()
    rejects_path = check_output(job, output)
    fmt = output_format(job, out_fmt)
    added, roles = (SCORE_FIELD,), ("score",)
    with _rejects_writer(job, rejects_path) as rejects:
        found = scan(job, added, rejects, stages)
        with work_dir(job, identity(job, bundle, roles, added), stages) as work:
            scores = infer(job, bundle, roles, found, added, work, stages)["score"]
        with stages.stage("write"), open_writer(output, fmt, (*found.columns, *added)) as writer:
            for i, r in enumerate(_again(job, found, added)):
                writer.write({**r.row, SCORE_FIELD: _float(scores[i])})
    return Report(found.records, rejected=found.rejected, seconds=stages.seconds,
                  warnings=coverage_warnings(bundle.models.values()))


def embed(job: Job, bundle: Bundle, output: Path, *, stages: Stages | None = None) -> Report:
    """`car-onnx embed`: a float32 .npy of sentence embeddings, one row per record in input order."""
    stages = stages or Stages()
    if Path(output).suffix != ".npy":
        raise UsageError(f"{output}: embeddings are written as .npy; name the output *.npy")
    rejects_path = check_output(job, output)
    roles = ("embed",)
    with _rejects_writer(job, rejects_path) as rejects:
        found = scan(job, (), rejects, stages)
        with work_dir(job, identity(job, bundle, roles, ()), stages) as work:
            vectors = infer(job, bundle, roles, found, (), work, stages)["embed"]
            with stages.stage("write"), replacing(output) as tmp:
                target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=vectors.shape)
                target[:] = vectors
                target.flush()
                del target
    return Report(found.records, rejected=found.rejected, seconds=stages.seconds,
                  warnings=coverage_warnings(bundle.models.values()))
