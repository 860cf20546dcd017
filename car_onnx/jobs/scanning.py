"""The scan of a file job's input (steps 1-2 of pipeline): every record validated (rejected or failing), counted
and located, the inference chunks planned (never spanning two files), and with exact dedup the duplicates found;
what it keeps of each record (place, duplicate) is on disk in an Index, not in memory."""

from __future__ import annotations

import dataclasses
import os
from array import array
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..api import CHUNK_RECORDS, Model, chunk_full, text_chars
from ..core.columns import Column, Index
from ..core.rows import BLOCK_ROWS
from ..errors import InputError, UsageError
from ..io.readers import check_format, iter_records, shards_of
from ..io.records import Record

ON_ERROR = ("fail", "skip")


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
    place: str  # "line" or "record"
    chunks: list  # records per inference chunk (chunks never span two files)


@dataclass(frozen=True)
class Scan:
    records: int
    columns: tuple[str, ...]  # every key of the accepted rows, in order of first appearance
    rejected: int
    stamp: tuple  # each file's size and mtime when the scan began
    counts: tuple  # records per file
    plan: tuple  # the inference chunks: (file index, first record in the file, records), in input order
    place: str  # "line" or "record"
    places: Column | None = None  # with an index: per record, the number of its location, to name it later
    duplicate_of: Column | None = None  # with an index: per record, the earlier record it repeats, or -1
    duplicates: int | None = None  # with an index's exact dedup: how many records repeat an earlier one

    def wheres(self, job: Job, rows) -> list[str]:
        """The places of `rows` ("line 7", "part-3.jsonl line 7"), as messages and the rejects file give them."""
        rows = np.asarray(rows, dtype=np.int64)
        shards = np.searchsorted(np.cumsum(self.counts), rows, side="right")
        return [job.where(int(s), f"{self.place} {int(p)}") for s, p in zip(shards, self.places[rows])]


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
        err = InputError(
            path,
            r.where,
            f"already has a field '{added[taken]}' that the output would overwrite{hint}",
            field=added[taken],
            params=(option,) if option else (),
        )
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


def scan_shard(
    job: Job,
    shard: int,
    model: Model,
    added: tuple[str, ...],
    reject=None,
    dedup: bool = False,
    advance: Callable[[int], None] = lambda n: None,
) -> Iterator[tuple | ShardScan]:
    """Validate and count the records of one file; a bad record raises, or goes to `reject(err, row)`. Yields
    (places, keys) of each BLOCK_ROWS records (keys: their 16-byte text keys joined, with `dedup`; else None) as
    they are read, and last the ShardScan."""
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
                keys += model.key(r)
            count += 1
            columns.update(dict.fromkeys(r.row))
            place, number = r.where.split()
            places.append(int(number))
            if len(places) == BLOCK_ROWS:
                yield np.frombuffer(places, dtype=np.int64), bytes(keys) if dedup else None
                keys, places = bytearray(), array("q")
            size, chars = size + 1, chars + text_chars(r)
            if chunk_full(size, chars, job.chunk_records):  # chunks never span two files
                sizes.append(size)
                size, chars = 0, 0
            advance(1)
    except InputError as err:
        if not (rejected and err.where is None and err.reason == "no records"):
            raise
    if places:
        yield np.frombuffer(places, dtype=np.int64), bytes(keys) if dedup else None
    yield ShardScan(count, columns, rejected, stamp, place, sizes + [size] if size else sizes)


def merge_scans(job: Job, parts: list[ShardScan], index: Index | None) -> Scan:
    """The scan of the whole input from those of its files, in order; with the `index` the records' places and
    keys went to, the duplicates found there (with its dedup)."""
    count, rejected = sum(p.records for p in parts), sum(p.rejected for p in parts)
    if count == 0:
        raise InputError(job.input, None, f"no records left: all {rejected} were rejected")
    columns: dict = {}
    plan = []
    for s, part in enumerate(parts):
        columns.update(part.columns)
        starts = np.cumsum([0] + part.chunks[:-1])
        plan.extend((s, int(a), m) for a, m in zip(starts, part.chunks))
    found = Scan(
        count,
        tuple(columns),
        rejected,
        tuple(p.stamp for p in parts),
        tuple(p.records for p in parts),
        tuple(plan),
        parts[0].place,
    )
    return (
        found
        if index is None
        else dataclasses.replace(found, **dict(zip(("places", "duplicate_of", "duplicates"), index.finish())))
    )


def scan(job: Job, model: Model, added: tuple[str, ...], rejects, stages, index: Index | None = None) -> Scan:
    """Validate and count every record before any work; rejected ones go to the `rejects` writer. With an
    `index`, each record's place (and with its dedup, its text key) is kept there, on disk."""

    def reject(err: InputError, raw) -> None:
        rejects.write(reject_row(job, shard, err, raw))

    with stages.stage("read") as advance:
        parts = []
        for shard in range(len(job.shards)):
            for got in scan_shard(
                job,
                shard,
                model,
                added,
                reject if job.on_error == "skip" else None,
                index is not None and index.dedup,
                advance,
            ):
                if isinstance(got, ShardScan):
                    parts.append(got)
                elif index is not None:
                    index.add(*got)
    return finish_scan(job, parts, stages, rejects, index)


def reject_row(job: Job, shard: int, err: InputError, raw) -> dict:
    """The rejects file's row of a bad record."""
    return invalid_row(job.where(shard, err.where) if err.where else None, err.field, err.reason, raw)


def invalid_row(where: str | None, field: str | None, error: str, record) -> dict:
    """The rejects file's row of a record rejected as invalid (the local and the Spark jobs write the same)."""
    return {"where": where, "reason": "invalid", "field": field, "error": error, "record": record}


def duplicate_row(where: str, original: str, kind: str, record) -> dict:
    """The rejects file's row of a duplicate dropped before ranking: where it is and where the record it repeats is."""
    return {"where": where, "reason": "duplicate_of", "duplicate_of": original, "kind": kind, "record": record}


def finish_scan(job: Job, parts: list[ShardScan], stages, rejects, index: Index | None = None) -> Scan:
    """The scan of the whole input (an input with no record left is an error), said in a note if any rejected."""
    found = merge_scans(job, parts, index)
    if job.on_error == "skip" and found.rejected:
        stages.note(f"{found.rejected} record(s) rejected, written to {rejects.path}")
    return found


def reread_records(job: Job, model: Model, scan: Scan, added: tuple[str, ...]) -> Iterator[tuple[int, Record]]:
    """The accepted records of every file, read again in input order, each with the index of its file."""
    for shard in range(len(job.shards)):
        for r in shard_records(job, model, scan.stamp[shard], added, shard):
            yield shard, r
