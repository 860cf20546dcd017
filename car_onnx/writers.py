"""Writing results atomically: a temporary file beside the target, fsynced and renamed into place when complete,
deleted if the job fails."""

from __future__ import annotations

import csv
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UsageError
from .readers import check_format, require_pyarrow


def _temp_path(path: Path) -> Path:
    """A hidden, unique name beside `path`. Named by hand: tempfile.mkstemp's 0600 mode would end up on the output."""
    return path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")


@contextmanager
def replacing(path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write; fsynced and renamed to `path` when the block
    completes, deleted if it fails."""
    path = Path(path)
    tmp = _temp_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RecordWriter:
    """Writes rows to a temporary file beside `path`; fsynced and renamed into place only when the `with` block
    completes, deleted if it fails. JSON and JSONL stream; CSV streams when `columns` (the header: every key of
    the rows to come) is given, else its header is the union of the rows' keys, known at the end; Parquet is
    assembled in memory and written at the end."""

    def __init__(self, path, fmt: str, columns: tuple[str, ...] | None = None):
        self.path, self.fmt, self.count, self.buffered = Path(path), check_format(fmt), 0, []
        self.columns = list(columns) if columns is not None and fmt == "csv" else None
        if fmt == "parquet":
            require_pyarrow()  # fail before any work if it is missing

    def __enter__(self):
        self.tmp = _temp_path(self.path)
        self.file = open(self.tmp, "x", encoding="utf-8", newline="")
        if self.fmt == "json":
            self.file.write("[")
        if self.columns is not None:
            self.csv = csv.writer(self.file)
            self.csv.writerow(self.columns)
        return self

    def write(self, row: dict) -> None:
        if self.fmt in ("json", "jsonl"):
            try:
                text = json.dumps(row, ensure_ascii=False, allow_nan=False, indent=2 if self.fmt == "json" else None)
            except (TypeError, ValueError) as err:
                raise UsageError(f"{self.path}: row {self.count + 1} cannot be written as JSON: {err}") from None
            if self.fmt == "json":
                self.file.write(("," if self.count else "") + "\n  " + text.replace("\n", "\n  "))
            else:
                self.file.write(text + "\n")
        elif self.columns is not None:
            if not row.keys() <= set(self.columns):
                raise UsageError(f"{self.path}: row {self.count + 1} has columns outside the header")
            self.csv.writerow([_cell(row.get(k)) for k in self.columns])
        else:
            self.buffered.append(dict(row))
        self.count += 1

    def _finish(self) -> None:
        header = list(dict.fromkeys(k for row in self.buffered for k in row))
        if self.fmt == "json":
            self.file.write("\n]\n" if self.count else "]\n")
        elif self.fmt == "csv" and self.columns is None:
            writer = csv.writer(self.file)
            writer.writerow(header)
            writer.writerows([_cell(row.get(k)) for k in header] for row in self.buffered)
        elif self.fmt == "parquet":
            self.file.close()
            pa = require_pyarrow()
            try:  # from_pydict over the union of keys: from_pylist would keep only the first row's keys
                table = pa.Table.from_pydict({k: [row.get(k) for row in self.buffered] for k in header})
            except pa.ArrowException as err:
                raise UsageError(f"{self.path}: cannot write as Parquet: {' '.join(str(err).split())}") from None
            pa.parquet.write_table(table, str(self.tmp))
            self.file = open(self.tmp, "rb")
        self.file.flush()
        os.fsync(self.file.fileno())

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._finish()
                self.file.close()
                os.replace(self.tmp, self.path)
        finally:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
        return False


def _cell(value) -> str:
    """A CSV cell: None is empty, objects and arrays are JSON, anything else is str()."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def open_writer(path, fmt: str, columns: tuple[str, ...] | None = None) -> RecordWriter:
    """A RecordWriter for `path` in format `fmt`, to use as a context manager."""
    return RecordWriter(path, fmt, columns)
