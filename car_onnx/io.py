"""Reading instruction datasets (JSON array, JSONL, CSV, Parquet; Alpaca fields or conversations) and writing
results atomically. Every bad record is an InputError naming the file, the line or record, and the field."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass, fields as dc_fields
from pathlib import Path
from typing import Iterator

from .errors import InputError, UsageError

FORMATS = ("json", "jsonl", "csv", "parquet")
SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
              type(None): "null"}
USER_ROLES, ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")


@dataclass(frozen=True)
class FieldMap:
    """Which source fields hold the instruction, the input and the output."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"

    @classmethod
    def parse(cls, specs: list[str]) -> FieldMap:
        """From ["instruction=question", "output=answer"] (the --field option)."""
        names = {f.name for f in dc_fields(cls)}
        mapping = {}
        for spec in specs:
            key, sep, value = spec.partition("=")
            if not sep or key.strip() not in names or not value.strip():
                raise UsageError(f"--field takes KEY=NAME with KEY one of instruction, input, output; got {spec!r}")
            mapping[key.strip()] = value.strip()
        return cls(**mapping)


@dataclass(frozen=True)
class Record:
    index: int  # 0-based position in the input
    where: str  # "line 7" or "record 7", for messages
    row: dict  # the original record, unchanged
    instruction: str
    input: str
    output: str


def detect_format(path) -> str:
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: cannot tell the format from the suffix (accepted: {', '.join(SUFFIXES)}); "
                         "pass --format")
    return fmt


def _type(value) -> str:
    return TYPE_NAMES.get(type(value), type(value).__name__)


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str):
    return json.loads(text, parse_constant=_reject_constant)


def _conversation(path, where, row) -> tuple[str, str, str]:
    """instruction = first user turn, output = the assistant turn after it, input = a system turn before it.
    Later turns are not part of the text."""
    key, role_key, text_key = ("messages", "role", "content") if "messages" in row else ("conversations", "from", "value")
    turns = row[key]
    if not isinstance(turns, list):
        raise InputError(path, where, f"expected an array of turns, got {_type(turns)}", key)
    system, instruction = "", None
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or not isinstance(turn.get(role_key), str) or not isinstance(turn.get(text_key), str):
            raise InputError(path, where, f"turn {n} must be an object with string '{role_key}' and '{text_key}'", key)
        role = turn[role_key].lower()
        if instruction is None and role == "system":
            system = turn[text_key]
        elif instruction is None and role in USER_ROLES:
            instruction = turn[text_key]
        elif instruction is not None and role in ASSISTANT_ROLES:
            return instruction, system, turn[text_key]
    missing = "no user turn" if instruction is None else "no assistant reply after the first user turn"
    raise InputError(path, where, f"conversation has {missing}", key)


def _record(path, index: int, where: str, row, fields: FieldMap) -> Record:
    if not isinstance(row, dict):
        raise InputError(path, where, f"expected a JSON object, got {_type(row)}")
    if fields.instruction not in row and ("messages" in row or "conversations" in row):
        return Record(index, where, row, *_conversation(path, where, row))
    values = {}
    for role in ("instruction", "input", "output"):
        name = getattr(fields, role)
        value = row.get(name)
        if value is None and role == "input":
            value = ""
        elif name not in row:
            raise InputError(path, where, "missing field", name)
        elif not isinstance(value, str):
            raise InputError(path, where, f"expected a string, got {_type(value)}", name)
        values[role] = value
    return Record(index, where, row, **values)


def _decode(path, data: bytes, line: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line += data[: err.start].count(b"\n")
        raise InputError(path, f"line {line}", f"invalid UTF-8 (byte 0x{data[err.start]:02x})") from None


def _read_text(path) -> str:
    text = _decode(path, Path(path).read_bytes(), 1)
    return text[1:] if text.startswith("\ufeff") else text


def _json(path, fields) -> Iterator[Record]:
    try:
        rows = _loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise InputError(path, f"line {err.lineno}, column {err.colno}", f"invalid JSON: {err.msg}") from None
    except ValueError as err:
        raise InputError(path, None, f"invalid JSON: {err}") from None
    if not isinstance(rows, list):
        raise InputError(path, None, f"expected a JSON array of records, got {_type(rows)}")
    for i, row in enumerate(rows):
        yield _record(path, i, f"record {i + 1}", row, fields)


def _jsonl(path, fields) -> Iterator[Record]:
    with open(path, "rb") as f:
        lines = iter(f)
        index = 0
        for number, raw in enumerate(lines, 1):
            text = _decode(path, raw, number).rstrip("\r\n")
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            where = f"line {number}"
            if not text.strip():
                raise InputError(path, where, "empty line")
            try:
                row = _loads(text)
            except json.JSONDecodeError as err:
                raise InputError(path, where, f"invalid JSON: {err.msg} (column {err.colno})") from None
            except ValueError as err:
                raise InputError(path, where, f"invalid JSON: {err}") from None
            yield _record(path, index, where, row, fields)
            index += 1


def _csv(path, fields) -> Iterator[Record]:
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        raise InputError(path, "line 1", f"invalid CSV: {err}") from None
    for name in (fields.instruction, fields.output):
        if name not in header:
            raise InputError(path, "line 1", f"the header has no column '{name}'")
    start = reader.line_num + 1
    index = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise InputError(path, f"line {start}", f"invalid CSV: {err}") from None
        where = f"line {start}"
        if len(cells) != len(header):
            raise InputError(path, where, f"expected {len(header)} cells like the header, got {len(cells)}")
        yield _record(path, index, where, dict(zip(header, cells)), fields)
        index += 1
        start = reader.line_num + 1


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError("Parquet needs pyarrow: pip install 'car-onnx[parquet]'") from None
    return pyarrow


def _parquet(path, fields) -> Iterator[Record]:
    pa = _pyarrow()
    try:
        batches = pa.parquet.ParquetFile(str(path)).iter_batches()
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield _record(path, index, f"record {index + 1}", row, fields)
                index += 1
    except (pa.ArrowException, OSError) as err:
        raise InputError(path, None, f"cannot read Parquet: {err}") from None


READERS = {"json": _json, "jsonl": _jsonl, "csv": _csv, "parquet": _parquet}


def iter_records(path, *, fmt: str | None = None, fields: FieldMap = FieldMap()) -> Iterator[Record]:
    """The records of a dataset, validated one by one; an input with no records is an error.
    Duplicates are kept as separate records; empty strings are valid values."""
    if not Path(path).is_file():
        raise InputError(path, None, "no such file")
    count = 0
    for record in READERS[fmt or detect_format(path)](path, fields):
        count += 1
        yield record
    if count == 0:
        raise InputError(path, None, "no records")


class RecordWriter:
    """Writes rows to a temporary file beside `path`; renamed into place only when the block completes."""

    def __init__(self, path, fmt: str):
        if fmt not in FORMATS:
            raise UsageError(f"output format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.path, self.fmt, self.count, self.buffered = Path(path), fmt, 0, []

    def __enter__(self):
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent or ".")
        self.tmp = Path(name)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        if self.fmt == "json":
            self.file.write("[")
        return self

    def write(self, row: dict) -> None:
        if self.fmt == "json":
            body = json.dumps(row, ensure_ascii=False, indent=2).replace("\n", "\n  ")
            self.file.write(("," if self.count else "") + "\n  " + body)
        elif self.fmt == "jsonl":
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            self.buffered.append(row)
        self.count += 1

    def _finish(self) -> None:
        if self.fmt == "json":
            self.file.write("\n]\n" if self.count else "]\n")
        elif self.fmt == "csv":
            header = list(dict.fromkeys(k for row in self.buffered for k in row))
            writer = csv.writer(self.file)
            writer.writerow(header)
            for row in self.buffered:
                writer.writerow([_cell(row.get(k)) for k in header])
        elif self.fmt == "parquet":
            pa = _pyarrow()
            self.file.close()
            pa.parquet.write_table(pa.Table.from_pylist(self.buffered), str(self.tmp))
            return
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
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def open_writer(path, fmt: str) -> RecordWriter:
    return RecordWriter(path, fmt)
