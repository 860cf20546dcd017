"""The jobs behind the CLI: read records, score/embed them with a bundle, select, write."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .errors import InputError, UsageError
from .io import FieldMap, Record, detect_format, iter_records, open_writer
from .clustering import Clusterer
from .selection import car_select, parse_size
from .tokenization import DEFAULT_MAX_TOKENS

SCORE_FIELD, CLUSTER_FIELD = "score", "cluster"


class Stages:
    """Timing of each stage, and a progress hook the CLI can replace with bars."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def progress(self, name: str, total: int | None):
        return nullcontext(lambda n: None)

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
    seconds: dict = field(default_factory=dict)
    selected_rows: list = field(default_factory=list)  # select: the chosen rows, in selection order


@dataclass(frozen=True)
class Job:
    """Options shared by every command."""

    input: Path
    fmt: str | None = None
    fields: FieldMap = FieldMap()
    max_tokens: int = DEFAULT_MAX_TOKENS
    force: bool = False  # replace an existing output


def read(job: Job, stages: Stages, added: tuple[str, ...] = ()) -> list[Record]:
    """All records of the input; refuses a record that already has a field the output would add."""
    with stages.stage("read"):
        records = list(iter_records(job.input, fmt=job.fmt, fields=job.fields))
    for r in records:
        for name in added:
            if name in r.row:
                raise InputError(job.input, r.where, f"already has a field '{name}' that the output would overwrite",
                                 field=name)
    return records


def infer(bundle: Bundle, records: list[Record], roles: tuple[str, ...], job: Job, stages: Stages) -> dict:
    passes = len({id(bundle.models[r]) for r in roles})  # one pass per distinct model
    with stages.stage("+".join(roles), total=len(records) * passes) as advance:
        return bundle.run(records, roles, job.max_tokens, advance)


def write(path: Path, fmt: str, rows, stages: Stages) -> None:
    with stages.stage("write"), open_writer(path, fmt) as writer:
        for row in rows:
            writer.write(row)


def _float(x) -> float:
    """A float32 as the shortest decimal that reads back to the same float32."""
    return float(str(np.float32(x)))


def output_format(job: Job, out_fmt: str | None) -> str:
    return out_fmt or job.fmt or detect_format(job.input)


def check_output(job: Job, output: Path) -> None:
    """Refuse to overwrite the input, or an existing file without --force, before any work is done."""
    if Path(output).resolve() == Path(job.input).resolve():
        raise UsageError(f"{output}: the output would overwrite the input; choose another path")
    if Path(output).exists() and not job.force:
        raise UsageError(f"{output}: already exists; pass --force to replace it")


def select(job: Job, bundle: Bundle, output: Path, *, n1="1000", n2="1", k=None, pca_variance=0.95, seed=42,
           write_all=False, out_fmt=None, stages: Stages | None = None) -> Report:
    """`car-onnx select`: the CaR selection of the input, written with `score` and `cluster` per record."""
    stages = stages or Stages()
    check_output(job, output)
    fmt = output_format(job, out_fmt)
    records = read(job, stages, (SCORE_FIELD, CLUSTER_FIELD))
    n1, n2 = parse_size(n1, len(records), "n1"), parse_size(n2, len(records), "n2")
    Clusterer(k, pca_variance=pca_variance, seed=seed).check(len(records))
    out = infer(bundle, records, ("score", "embed"), job, stages)
    with stages.stage("cluster+select"):
        sel = car_select(out["score"], out["embed"], n1=n1, n2=n2, k=k, pca_variance=pca_variance, seed=seed)
    def row(i):
        return {**records[i].row, SCORE_FIELD: _float(out["score"][i]), CLUSTER_FIELD: int(sel.labels[i])}

    write(output, fmt, (row(i) for i in (range(len(records)) if write_all else sel.indices)), stages)
    return Report(len(records), len(sel.indices), int(sel.labels.max()) + 1, stages.seconds,
                  [row(i) for i in sel.indices])


def score(job: Job, bundle: Bundle, output: Path, *, out_fmt=None, stages: Stages | None = None) -> Report:
    """`car-onnx score`: every record with its quality score, in input order."""
    stages = stages or Stages()
    check_output(job, output)
    fmt = output_format(job, out_fmt)
    records = read(job, stages, (SCORE_FIELD,))
    scores = infer(bundle, records, ("score",), job, stages)["score"]
    write(output, fmt, ({**r.row, SCORE_FIELD: _float(s)} for r, s in zip(records, scores)), stages)
    return Report(len(records), seconds=stages.seconds)


def embed(job: Job, bundle: Bundle, output: Path, *, stages: Stages | None = None) -> Report:
    """`car-onnx embed`: a float32 .npy of sentence embeddings, one row per record in input order."""
    stages = stages or Stages()
    if Path(output).suffix != ".npy":
        raise UsageError(f"{output}: embeddings are written as .npy; name the output *.npy")
    check_output(job, output)
    records = read(job, stages)
    vectors = infer(bundle, records, ("embed",), job, stages)["embed"]
    with stages.stage("write"):
        tmp = Path(output).with_name(f".{Path(output).name}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, vectors.astype(np.float32))
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)
    return Report(len(records), seconds=stages.seconds)
