"""The file jobs behind the CLI, on the Python API's Model. The input is one file or several (a directory or a glob:
its shards, read in order as one dataset). Each job reads it in passes, so memory does not grow with the dataset:
1. check: every option, the output's format, directory and optional dependency, before any record is read;
2. scan: validate every record (rejecting or failing), count them, note the columns and exact duplicates, and
   plan the inference chunks (never spanning two files);
3. infer: score/embed chunk by chunk, each finished chunk kept in the work directory (resumable);
4. cluster + select on the scores and the embeddings (memory-mapped, or read chunk by chunk with --cluster sample,
   whose assignment of every row runs on the cluster under Ray);
5. write: read the input again and write the output rows (and the rejects file).
Steps 2 and 3 run in this process, or on a Ray cluster (car_onnx.ray.RayEngine), with the same result."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import warnings
from array import array
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import lock
from .clustering import PCA_VARIANCE, SAMPLE_SIZE, SEED, Clusterer
from .errors import InputError, UsageError
from .manifest import sha256_file as file_sha256
from .model import CHUNK_CHARS, CHUNK_RECORDS, Model, duplicates, text_key
from .readers import SUFFIXES, check_format, check_input, detect_format, iter_records, require_pyarrow, shards_of
from .records import Record
from .selection import N1, N2, Dedup, Size, car_select, check_clustering
from .workdir import WorkDir
from .writers import create_npy, directory_writers, open_writer, remove_stale_temps, replacing

SCORE_FIELD, CLUSTER_FIELD = "score", "cluster"
ON_ERROR = ("fail", "skip")


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
class Report:
    records: int
    selected: int = 0
    top: int = 0  # of the selected, how many from the n1 block (the rest are cluster picks)
    clusters: int = 0
    rejected: int = 0
    duplicates: dict = field(default_factory=dict)  # "exact" / "near" -> rows dropped before ranking
    rejects_path: Path | None = None
    seconds: dict = field(default_factory=dict)
    shown: list = field(default_factory=list)  # select: (row, record) of each selected row, in selection order


@dataclass(frozen=True)
class Job:
    """Options of a file job (the Model holds the bundle, device, precision, fields and token budget)."""

    input: Path  # a file, a directory of dataset files (its shards, by name) or a glob pattern
    fmt: str | None = None
    force: bool = False  # replace an existing output
    work_dir: Path | None = None  # keep finished chunks here and reuse them (else a temporary directory)
    on_error: str = "fail"  # or "skip": bad records go to the rejects file
    rejects: Path | None = None  # the rejects file [default: OUTPUT.rejects.jsonl]
    chunk_records: int = CHUNK_RECORDS

    def __post_init__(self):
        if self.on_error not in ON_ERROR:
            raise UsageError(f"{{on_error}} must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}", "on_error")
        if self.chunk_records < 1:
            raise UsageError(f"{{chunk_records}} must be >= 1, got {self.chunk_records}", "chunk_records")
        if self.fmt is not None:
            check_format(self.fmt)

    @cached_property
    def shards(self) -> tuple[Path, ...]:
        return shards_of(self.input)

    def where(self, shard: int, where: str) -> str:
        """A record's place as messages and the rejects file give it: "line 7", or "part-3.jsonl line 7" when
        the input has several files."""
        return f"{self.shards[shard].name} {where}" if len(self.shards) > 1 else where


@dataclass(frozen=True)
class ShardScan:
    """What the scan found in one file of the input."""

    records: int
    columns: dict  # every key of the accepted rows, in order of first appearance
    rejected: int
    stamp: tuple  # the file's size and mtime when the scan began
    keys: bytes | None  # with exact dedup: each record's 16-byte text key, joined
    places: np.ndarray  # per record, the number of its location
    place: str  # "line" or "record"
    chunks: list  # records per inference chunk (chunks never span two files)


@dataclass(frozen=True)
class Scan:
    records: int
    columns: tuple[str, ...]  # every key of the accepted rows, in order of first appearance
    rejected: int
    stamp: tuple  # each file's size and mtime when the scan began
    duplicate_of: np.ndarray | None  # with exact dedup: per record, the earlier record with the same text, or -1
    places: np.ndarray  # per record, the number of its location ("line 7", "record 7"), to name it later
    place: str  # "line" or "record"
    shard_of: np.ndarray  # per record, the index of its file in job.shards
    plan: tuple  # the inference chunks: (file index, first record in the file, records), in input order

    def where(self, job: Job, i: int) -> str:
        return job.where(int(self.shard_of[i]), f"{self.place} {self.places[i]}")


def _stamp(path: Path) -> tuple:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


OPTION_OF = {0: "score_field", 1: "cluster_field"}  # which option names the output's added field at this place


def _records(job: Job, shard: int, model: Model, added: tuple[str, ...], reject=None) -> Iterator[Record]:
    """The accepted records of one file; a record that already has a field the output adds is refused (or
    rejected)."""
    path = job.shards[shard]
    for r in iter_records(path, fmt=job.fmt, fields=model.fields, reject=reject):
        taken = next((i for i, name in enumerate(added) if name in r.row), None)
        if taken is None:
            yield r
            continue
        option = OPTION_OF.get(taken)
        hint = f" (name the added field with {{{option}}})" if option else ""
        err = InputError(path, r.where, f"already has a field '{added[taken]}' that the output would "
                         f"overwrite{hint}", field=added[taken], params=(option,) if option else ())
        if reject is None:
            raise err
        reject(err, r.row)


def check_unchanged(job: Job, shard: int, stamp: tuple) -> None:
    """File `shard` still has the size and mtime `stamp` the scan saw."""
    if _stamp(job.shards[shard]) != stamp:
        raise InputError(job.shards[shard], None, "changed while the job was running; run it again")


def shard_records(job: Job, model: Model, stamp: tuple, added: tuple[str, ...], shard: int) -> Iterator[Record]:
    """The accepted records of one file read again (bad ones dropped silently: the scan has reported them); the
    file must still have the size and mtime `stamp` the scan saw."""
    check_unchanged(job, shard, stamp)
    skip = (lambda err, raw: None) if job.on_error == "skip" else None
    yield from _records(job, shard, model, added, skip)


def _again(job: Job, model: Model, scan: Scan, added: tuple[str, ...]) -> Iterator[Record]:
    """The accepted records of every file, read again in input order."""
    for shard in range(len(job.shards)):
        yield from shard_records(job, model, scan.stamp[shard], added, shard)


def scan_shard(job: Job, shard: int, model: Model, added: tuple[str, ...], reject=None, dedup: bool = False,
               advance: Callable[[int], None] = lambda n: None) -> ShardScan:
    """Validate and count the records of one file; a bad record raises, or goes to `reject(err, row)`."""
    path = job.shards[shard]
    stamp, count, rejected, columns, keys, places, place = _stamp(path), 0, 0, {}, bytearray(), array("q"), "line"
    sizes, size, chars = [], 0, 0

    def rejecting(err: InputError, raw) -> None:
        nonlocal rejected
        rejected += 1
        reject(err, raw)

    try:
        for r in _records(job, shard, model, added, rejecting if reject is not None else None):
            if dedup:
                keys += text_key(model.text(r.instruction, r.input, r.output))
            count += 1
            columns.update(dict.fromkeys(r.row))
            place, number = r.where.split()
            places.append(int(number))
            size, chars = size + 1, chars + len(r.instruction) + len(r.input) + len(r.output)
            if size == job.chunk_records or chars >= CHUNK_CHARS:  # the rule of model.chunks, within this file
                sizes.append(size)
                size, chars = 0, 0
            advance(1)
    except InputError as err:
        if not (rejected and err.where is None and err.reason == "no records"):
            raise
    return ShardScan(count, columns, rejected, stamp, bytes(keys) if dedup else None, np.asarray(places, dtype=np.int64),
                     place, sizes + [size] if size else sizes)


def merge_scans(job: Job, parts: list[ShardScan], dedup: bool) -> Scan:
    """The scan of the whole input from those of its files, in order."""
    count, rejected = sum(p.records for p in parts), sum(p.rejected for p in parts)
    if count == 0:
        raise InputError(job.input, None, f"no records left: all {rejected} were rejected")
    columns: dict = {}
    plan = []
    for s, part in enumerate(parts):
        columns.update(part.columns)
        starts = np.cumsum([0] + part.chunks[:-1])
        plan.extend((s, int(a), m) for a, m in zip(starts, part.chunks))
    keys = b"".join(p.keys for p in parts) if dedup else None
    return Scan(count, tuple(columns), rejected, tuple(p.stamp for p in parts), duplicates(keys) if dedup else None,
                np.concatenate([p.places for p in parts]), parts[0].place,
                np.repeat(np.arange(len(parts), dtype=np.int32), [p.records for p in parts]), tuple(plan))


def scan(job: Job, model: Model, added: tuple[str, ...], rejects, stages: Stages, dedup: bool = False) -> Scan:
    """Validate and count every record before any work; rejected ones go to the `rejects` writer."""
    def reject(err: InputError, raw) -> None:
        rejects.write(reject_row(job, shard, err, raw))

    with stages.stage("read") as advance:
        parts = []
        for shard in range(len(job.shards)):
            parts.append(scan_shard(job, shard, model, added, reject if job.on_error == "skip" else None, dedup,
                                    advance))
    return finish_scan(job, parts, dedup, stages, rejects)


def reject_row(job: Job, shard: int, err: InputError, raw) -> dict:
    """The rejects file's row of a bad record."""
    return {"where": job.where(shard, err.where) if err.where else None, "reason": "invalid", "field": err.field,
            "error": err.reason, "record": raw}


def finish_scan(job: Job, parts: list[ShardScan], dedup: bool, stages: Stages, rejects) -> Scan:
    """The scan of the whole input (an input with no record left is an error), said in a note if any rejected."""
    found = merge_scans(job, parts, dedup)
    if job.on_error == "skip" and found.rejected:
        stages.note(f"{found.rejected} record(s) rejected, written to {rejects.path}")
    return found


def identity(job: Job, model: Model, roles: tuple[str, ...], added: tuple[str, ...]) -> dict:
    """Everything a chunk's results depend on (thread counts change only the last float bits: left out; so are
    the selection's parameters, which only re-cluster)."""
    fields = model.fields
    return {"bundle_manifest_sha256": file_sha256(model.bundle / "manifest.json"),
            "models": {model.manifest.model_for(r).name: p for r, p in model.precisions(roles).items()},
            "device": model.config.device, "input_sha256": [file_sha256(f) for f in job.shards],
            "input_format": job.fmt, "fields": [fields.instruction, fields.input, fields.output],
            "on_error": job.on_error, "refused_fields": sorted(added), "roles": list(roles),
            "max_tokens": model.max_tokens, "chunk_records": job.chunk_records, "chunk_chars": CHUNK_CHARS}


def infer(job: Job, model: Model, roles: tuple[str, ...], scan_: Scan, added: tuple[str, ...], work: WorkDir,
          stages: Stages) -> None:
    """Scores and/or embeddings of the accepted records, chunk by chunk into `work`; chunks finished by an
    earlier run with the same identity are reused."""
    passes = len({model.manifest.model_for(r).name for r in roles})  # one pass per distinct model
    records = _again(job, model, scan_, added)
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
        raise UsageError(f"{output}: cannot tell the output format from the suffix (accepted: {', '.join(SUFFIXES)}); "
                         "name the output so or pass {output_format}", "output_format")
    return fmt


def output_files(job: Job, output: Path, fmt: str) -> list[str] | None:
    """The file names of a directory output (one per input file, holding its rows), or None for one file: a
    directory is written for Parquet output of an input of several files to a path with no suffix."""
    if fmt != "parquet" or len(job.shards) < 2 or (Path(output).suffix and not Path(output).is_dir()):
        return None
    names = [f"{shard.stem}.parquet" for shard in job.shards]
    if len(set(names)) < len(names):
        raise UsageError(f"{output}: input files share a name; the output directory would need two files of one "
                         "name (write one file instead: name the output *.parquet)")
    return names


def check_output(job: Job, output: Path, fmt: str, rejects_used: bool) -> Path | None:
    """Before any work: the output (and rejects file) may be written: not the input, not an existing file without
    --force, in an existing writable directory. Returns the rejects file's path, if the job may write one."""
    for shard in job.shards:
        check_input(shard)  # faults: an unreadable input fails here, before any model work
    rejects = (job.rejects or Path(f"{output}.rejects.jsonl")) if rejects_used else None
    if job.rejects is not None and not rejects_used:
        raise UsageError("{rejects} goes with {on_error} skip (or, for select, a {dedup} other than none)",
                         "rejects", "on_error", "dedup")
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


def select(job: Job, model: Model, output: Path, *, n1=N1, n2=N2, k=None, pca_variance=PCA_VARIANCE, seed=SEED,
           dedup="exact", write_all=False, out_fmt=None, score_field=SCORE_FIELD, cluster_field=CLUSTER_FIELD,
           cluster="auto", sample_size=SAMPLE_SIZE, stages: Stages | None = None, report_path: Path | None = None,
           engine=None) -> Report:
    """`car-onnx select`: the CaR selection of the input, each selected record written with its score, cluster,
    rank and the reason it was kept ("top" or "cluster"); with `write_all`, every record, `selected` or not.
    `engine` runs the scan and the inference elsewhere (car_onnx.ray); the selection is the same."""
    stages = stages or Stages()
    size1, size2, dedup = Size.parse(n1, "n1"), Size.parse(n2, "n2"), Dedup.parse(dedup)
    extra = ("rank", "selected", "reason") if write_all else ("rank", "reason")
    added = _check_names(score_field, cluster_field, extra)
    fmt = output_format(output, out_fmt)
    rejects_path = check_output(job, output, fmt, job.on_error == "skip" or dedup.exact)
    output_files(job, output, fmt)
    clusterer = Clusterer(k, pca_variance=pca_variance, seed=seed, mode=cluster, sample_size=sample_size)
    clusterer.check()
    if report_path is not None:  # --report (car_onnx/report.py): checked before any work
        from . import report as curation

        curation.require()
        curation.check_path(report_path, job.force)
    roles = ("score", "embed")
    with lock.held(job.work_dir), _rejects_writer(job, rejects_path) as rejects:
        found = (engine.scan if engine else scan)(job, model, added, rejects, stages, dedup=dedup.exact)
        ranked = found.records - int((found.duplicate_of >= 0).sum()) if dedup.exact else found.records
        check_clustering(clusterer, ranked, dedup.near)
        with work_dir(job, model, roles, added, stages) as work:
            (engine.infer if engine else infer)(job, model, roles, found, added, work, stages)
            sampled = clusterer.sampled(ranked)  # scores and labels stay on disk, in the work dir
            out = work.assemble(found.records, in_chunks=sampled)
            embeddings = engine.rows(out["embed"], stages) if engine else out["embed"]
            with stages.stage("cluster+select"):
                sel = car_select(out["score"], embeddings, n1=size1, n2=size2, k=k, pca_variance=pca_variance,
                                 seed=seed, near=dedup.near, duplicate_of=found.duplicate_of, cluster=cluster,
                                 sample_size=sample_size, log=stages.note,
                                 labels=work.column("labels", found.records, "int64") if sampled else None)
            del out, embeddings
            page = None
            if report_path is not None:  # the report reads every row's score and cluster: in memory
                sel = dataclasses.replace(sel, scores=np.asarray(sel.scores[:]), labels=np.asarray(sel.labels[:]))
                page = curation.Run({}, {}, np.zeros(found.records, dtype=np.int64))
            report = _write_selection(job, model, output, fmt, found, sel, added, write_all, rejects, stages, page)
    report.rejects_path = rejects_path if rejects is not None and rejects.count else None
    if page is not None:  # --report: the page, from what the write pass collected
        with stages.stage("report"):
            page.input, page.records, page.rejected, page.duplicates = str(job.input), found.records, \
                found.rejected, report.duplicates or {"exact": 0, "near": 0}
            page.n1, page.n2, page.dedup, page.seconds = str(size1), str(size2), str(dedup), dict(stages.seconds)
            page.bundle = curation.bundle_info(model)
            curation.write(report_path, sel, page)
    return report


def _write_selection(job, model, output, fmt, found: Scan, sel, added, write_all, rejects, stages,
                     page=None) -> Report:
    score_field, cluster_field = added[:2]
    position, reasons = {int(i): p for p, i in enumerate(sel.indices)}, sel.reasons
    if write_all:  # every row's rank, score and cluster
        ranks, scores, labels = sel.ranks, np.asarray(sel.scores[:]), np.asarray(sel.labels[:])
    else:  # the selected rows' only (sample mode keeps the others on disk)
        chosen = np.sort(sel.indices)
        ranks, scores, labels = (dict(zip(chosen.tolist(), values)) for values in
                                 (sel.ranks_of(chosen), sel.scores[chosen], sel.labels[chosen]))
    exact = found.duplicate_of
    shown: dict[int, tuple] = {}
    if page is not None:
        from . import report as curation

        want = curation.wanted(sel)

    def row(i: int, r: Record) -> dict:
        out = {**r.row, score_field: _float(scores[i]), cluster_field: int(labels[i]), "rank": int(ranks[i]) or None}
        if write_all:
            out["selected"] = i in position
        out["reason"] = str(reasons[position[i]]) if i in position else None
        return out

    columns = (*found.columns, *added) if write_all else None  # all rows: the header is known, CSV streams
    with stages.stage("write", total=found.records) as advance, _writers(job, output, fmt, columns) as writer:
        for i, r in enumerate(_again(job, model, found, added)):
            original = int(sel.duplicate_of[i])
            if original >= 0 and rejects is not None:
                kind = "exact" if exact is not None and exact[i] >= 0 else "near"
                rejects.write({"where": found.where(job, i), "reason": "duplicate_of",
                               "duplicate_of": found.where(job, original),
                               "kind": kind, "record": r.row})
            if write_all:
                writer(found.shard_of[i]).write(row(i, r))
            if i in position:
                shown[i] = (row(i, r), r)
            if page is not None:  # --report: text lengths, and the texts the page shows
                text = model.text(r.instruction, r.input, r.output)
                page.lengths[i] = len(text)
                if i in want:
                    page.texts[i], page.where[i] = curation.clip(text), found.where(job, i)
            advance(1)
        if not write_all:
            for i in sel.indices:
                writer(found.shard_of[i]).write(shown[int(i)][0])
    duplicates = {}
    if exact is not None:
        duplicates = {"exact": int((exact >= 0).sum()), "near": int((sel.duplicate_of >= 0).sum() - (exact >= 0).sum())}
    if duplicates and rejects is not None and sum(duplicates.values()):
        stages.note(f"{sum(duplicates.values())} duplicate(s) dropped before ranking, written to {rejects.path}")
    return Report(found.records, len(sel.indices), sel.n_top, sel.k, found.rejected, duplicates,
                  seconds=stages.seconds, shown=[shown[int(i)] for i in sel.indices])


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


def score(job: Job, model: Model, output: Path, *, out_fmt=None, score_field=SCORE_FIELD,
          stages: Stages | None = None) -> Report:
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
        with stages.stage("write", total=found.records) as advance, \
                open_writer(output, fmt, (*found.columns, *added)) as writer:
            for i, r in enumerate(_again(job, model, found, added)):
                writer.write({**r.row, score_field: _float(scores[i])})
                advance(1)
    return Report(found.records, rejected=found.rejected, seconds=stages.seconds)


def embed(job: Job, model: Model, output: Path, *, stages: Stages | None = None) -> Report:
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
    return Report(found.records, rejected=found.rejected, seconds=stages.seconds)
