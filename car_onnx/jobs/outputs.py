"""A file job's outputs: their format and files, checked before any work (not the input, not an existing file
without force, a writable directory), the rejects file, and the writers of the output rows."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..core.files import remove_stale_temps
from ..errors import UsageError
from ..io.readers import SUFFIXES, check_format, check_input, detect_format, require_pyarrow
from ..io.writers import directory_writers, open_writer
from .scanning import Job
from .workdir import WorkDir


def shortest(x) -> float:
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
def rejects_writer(job: Job, path: Path | None):
    """The rejects file (JSONL): written in full if anything was rejected, not at all if the job fails or nothing
    was (a stale one is removed with --force)."""
    if path is None:
        yield None
        return
    with open_writer(path, "jsonl", keep_empty=False) as writer:
        yield writer
    if writer.count == 0 and job.force:
        Path(path).unlink(missing_ok=True)


def check_names(score_field: str, cluster_field: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    """The fields the output adds: the score's and the cluster's names (checked) and `extra`."""
    names = {"score_field": score_field, "cluster_field": cluster_field}
    for option, name in names.items():
        if not isinstance(name, str) or not name:
            raise UsageError(f"{{{option}}} must be a non-empty name, got {name!r}", option)
        if name in extra:
            raise UsageError(f"{{{option}}} {name!r} is a field the output adds itself; choose another name", option)
    if score_field == cluster_field:
        raise UsageError("{score_field} and {cluster_field} must differ", "score_field", "cluster_field")
    return (score_field, cluster_field, *extra)


@contextmanager
def writers(job: Job, output: Path, fmt: str, columns):
    """`writer(file index)`: where the output rows of that input file go (one file, or a directory's files)."""
    names = output_files(job, output, fmt)
    if names is None:
        with open_writer(output, fmt, columns) as writer:
            yield lambda shard: writer
    else:
        with directory_writers(output, names, fmt, columns) as writer:
            yield writer
