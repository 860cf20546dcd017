"""The write pass of `select`: the input read again, the output rows written in selection order (or every row),
each dropped duplicate to the rejects file, and the texts the curation report shows."""

from __future__ import annotations

import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..api import Model
from ..core.rows import BLOCK_ROWS
from ..io.records import Record
from .outputs import shortest, writers
from .scanning import Job, Scan, duplicate_row, reread_records
from .stages import RunSummary, Stages


@dataclass(frozen=True)
class Target:
    """What the write pass of `select` writes: the output and its format, the fields it adds to each row (score,
    cluster, rank, [selected,] reason), every row or the selected ones, and whether to keep them for --show."""

    output: Path
    fmt: str
    added: tuple[str, ...]
    write_all: bool
    show: bool


def write_selection(
    job: Job, model: Model, found: Scan, sel, target: Target, rejects, stages: Stages, texts=None
) -> RunSummary:
    """The write pass: the input read again, the output rows written (and each dropped duplicate to the rejects
    file). Per-record facts are read a block of rows at a time (in sample mode they are on disk), and the selected
    rows wait in a temporary file to be written in selection order: memory holds neither n rows nor the selected
    records. `texts`: ({row: text}, {row: place}, lengths, units) for --report, filled here."""
    added, write_all = target.added, target.write_all
    score_field, cluster_field = added[:2]
    order = np.argsort(sel.indices, kind="stable")  # the selection in input order: chosen[j] is at place order[j]
    chosen = np.asarray(sel.indices)[order]
    if write_all:  # every row's rank, score and cluster, by row
        ranks, scores, labels = sel.ranks, np.asarray(sel.scores[:]), np.asarray(sel.labels[:])
    else:  # the selected rows', by place in `chosen`
        ranks, scores, labels = sel.ranks_of(chosen), sel.scores[chosen], sel.labels[chosen]
    if texts is not None:
        from ..io import report as curation

        want = curation.wanted(sel)

    def row(i: int, r: Record, j: int | None) -> dict:
        at = i if write_all else j
        out = {
            **r.row,
            score_field: shortest(scores[at]),
            cluster_field: int(labels[at]),
            "rank": int(ranks[at]) or None,
        }
        if write_all:
            out["selected"] = j is not None
        out["reason"] = None if j is None else "top" if order[j] < sel.n_top else "cluster"
        return out

    columns = (*found.columns, *added) if write_all else None  # all rows: the header is known, CSV streams
    offsets, repeats, j = np.zeros(len(chosen), dtype=np.int64), 0, 0
    with (
        stages.stage("write", total=found.records) as advance,
        writers(job, target.output, target.fmt, columns) as writer,
        tempfile.TemporaryFile() as held,
    ):
        for i, (shard, r) in enumerate(reread_records(job, model, found, added)):
            if i % BLOCK_ROWS == 0:  # the next block's duplicates, and where the records they repeat are
                dup = np.asarray(sel.duplicate_of[i : i + BLOCK_ROWS])
                originals = np.unique(dup[dup >= 0]) if rejects is not None else ()
                named = dict(zip(np.asarray(originals).tolist(), found.wheres(job, originals)))
                exact = dup if sel.duplicate_of is found.duplicate_of else found.duplicate_of[i : i + BLOCK_ROWS]
                repeats += int((dup >= 0).sum())
            original = int(dup[i % BLOCK_ROWS])
            if original >= 0 and rejects is not None:
                kind = "exact" if exact[i % BLOCK_ROWS] >= 0 else "near"
                rejects.write(duplicate_row(job.where(shard, r.where), named[original], kind, r.row))
            picked = j if j < len(chosen) and chosen[j] == i else None
            if write_all:
                writer(shard).write(row(i, r, picked))
            if picked is not None:
                offsets[order[j]], j = held.tell(), j + 1
                pickle.dump((row(i, r, picked), r, shard), held)
            if texts is not None:  # --report: text lengths, and the texts the page shows
                text = model.text(r.instruction, r.input, r.output)
                texts[2][i], texts[3][i] = len(text), model.units(r)
                if i in want:
                    texts[0][i], texts[1][i] = curation.clip(text), job.where(shard, r.where)
            advance(1)
        shown = []
        for offset in offsets if target.show or not write_all else ():  # in selection order
            held.seek(offset)
            out, r, shard = pickle.load(held)
            if not write_all:
                writer(shard).write(out)
            if target.show:
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
