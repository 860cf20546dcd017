"""Writing records: JSON lines, a JSON array, CSV and Parquet, each through an atomic file (core/files.py)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..core.files import create_locked, naming, temp_path
from ..errors import UsageError
from .readers import check_format, require_pyarrow

PARQUET_ROWS = 65536  # rows per Parquet row group: what Parquet output holds in memory at once


class RecordWriter:
    """Writes rows to a temporary file beside `path`; fsynced and renamed into place only when the `with` block
    completes, deleted if it fails (or, without `keep_empty`, if no row was written). JSON and JSONL stream; CSV
    streams when `columns` (the header: every key of the rows to come) is given, else its header is the union of
    the rows' keys, known at the end; Parquet streams a row group at a time into part files, joined at the end
    under the union of their schemas."""

    def __init__(self, path, fmt: str, columns: tuple[str, ...] | None = None, keep_empty: bool = True):
        self.path, self.fmt, self.count, self.buffered = Path(path), check_format(fmt), 0, []
        self.columns = list(columns) if columns is not None and fmt == "csv" else None
        self.keep_empty, self.parts = keep_empty, []
        if fmt == "parquet":
            require_pyarrow()  # fail before any work if it is missing

    def __enter__(self):
        self.tmp = temp_path(self.path)
        with naming(self.path):
            self.lock = create_locked(self.tmp)
        self.file = open(self.tmp, "w", encoding="utf-8", newline="")
        if self.fmt == "json":
            self.file.write("[")
        if self.columns is not None:
            self.csv = csv.writer(self.file)
            self.csv.writerow(self.columns)
        return self

    def write(self, row: dict) -> None:
        with naming(self.path):
            self._write(row)

    def _write(self, row: dict) -> None:
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
            if self.fmt == "parquet" and len(self.buffered) == PARQUET_ROWS:
                self._parquet_part()
        self.count += 1

    def _parquet_part(self) -> None:
        """Write the buffered rows as one part file (a table over the union of their keys)."""
        pa = require_pyarrow()
        header = list(dict.fromkeys(k for row in self.buffered for k in row))
        try:  # from_pydict over the union of keys: from_pylist would keep only the first row's keys
            table = pa.Table.from_pydict({k: [row.get(k) for row in self.buffered] for k in header})
        except pa.ArrowException as err:
            raise UsageError(f"{self.path}: cannot write as Parquet: {' '.join(str(err).split())}") from None
        part = self.tmp.with_name(f"{self.tmp.name}.{len(self.parts)}")
        pa.parquet.write_table(table, str(part))
        self.parts.append(part)
        self.buffered = []

    def _join_parquet(self) -> None:
        """The part files as row groups of one file, each cast to the union of their schemas."""
        pa = require_pyarrow()
        if self.buffered or not self.parts:
            self._parquet_part()
        try:
            schema = pa.unify_schemas(
                [pa.parquet.read_schema(str(p)) for p in self.parts], promote_options="permissive"
            )
            with pa.parquet.ParquetWriter(str(self.tmp), schema) as out:
                for part in self.parts:
                    table = pa.parquet.read_table(str(part))
                    for name in schema.names:
                        if name not in table.column_names:
                            table = table.append_column(name, pa.nulls(len(table), schema.field(name).type))
                    out.write_table(table.select(schema.names).cast(schema))
        except pa.ArrowException as err:
            raise UsageError(f"{self.path}: cannot write as Parquet: {' '.join(str(err).split())}") from None

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
            self._join_parquet()
            self.file = open(self.tmp, "rb")
        self.file.flush()
        os.fsync(self.file.fileno())

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and (self.count or self.keep_empty):
                with naming(self.path):
                    self._finish()
                    self.file.close()
                    os.replace(self.tmp, self.path)
        finally:
            try:
                self.file.close()
            except OSError:  # the flush of a failed write fails again: the file is removed anyway
                pass
            for temporary in [self.tmp, *self.parts]:
                temporary.unlink(missing_ok=True)
            os.close(self.lock)
        return False


def _cell(value) -> str:
    """A CSV cell: None is empty, objects and arrays are JSON, anything else is str()."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def open_writer(path, fmt: str, columns: tuple[str, ...] | None = None, keep_empty: bool = True) -> RecordWriter:
    """A RecordWriter for `path` in format `fmt`, to use as a context manager."""
    return RecordWriter(path, fmt, columns, keep_empty)


@contextmanager
def directory_writers(output, names: list[str], fmt: str, columns: tuple[str, ...] | None = None):
    """`writer(i)`: the writer of file `names[i]` in the directory `output`, opened on first use. The files are
    written in a hidden directory beside `output` that replaces it once every file is complete: the directory
    appears whole, or not at all (a failed run removes its partial files)."""
    output = Path(output)
    tmp = output.with_name(f".{output.name}.{os.urandom(6).hex()}.tmpdir")
    tmp.mkdir()
    try:
        with ExitStack() as stack:
            writers: dict[int, RecordWriter] = {}

            def writer(i: int) -> RecordWriter:
                if i not in writers:
                    writers[i] = stack.enter_context(open_writer(tmp / names[i], fmt, columns, keep_empty=False))
                return writers[i]

            yield writer
        old = output.with_name(f".{output.name}.{os.urandom(6).hex()}.old") if output.exists() else None
        if old is not None:
            os.replace(output, old)
        os.replace(tmp, output)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
