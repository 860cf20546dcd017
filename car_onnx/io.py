"""Reading instruction datasets (JSON array, JSONL, CSV, Parquet; Alpaca fields or conversations) and writing
results atomically. Every bad record is an InputError naming the file, the line or record, and the field."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, fields as dc_fields
from pathlib import Path
from typing import Iterator

from .errors import InputError, UsageError

FORMATS = ("json", "jsonl", "csv", "parquet")
SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
              type(None): "null"}
# Per conversation field: the role and text keys of its turns, and role name -> role.
STYLES = {"messages": ("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
          "conversations": ("from", "value", {"system": "system", "human": "user", "user": "user",
                                              "gpt": "assistant", "assistant": "assistant"})}
SURROGATE = re.compile("[\ud800-\udfff]")
ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class FieldMap:
    """Which source fields hold the instruction, the input and the output."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"

    @classmethod
    def parse(cls, specs: list[str]) -> FieldMap:
        """From ["instruction=question", "output=answer"] (the --field option); each key at most once."""
        names = [f.name for f in dc_fields(cls)]
        mapping = {}
        for spec in specs:
            key, sep, value = spec.partition("=")
            key = key.strip()
            if not sep or key not in names or not value:
                raise UsageError(f"--field takes KEY=NAME with KEY one of {', '.join(names)}; got {spec!r}")
            if key in mapping:
                raise UsageError(f"--field {key} is given twice")
            mapping[key] = value
        return cls(**mapping)


@dataclass(frozen=True)
class Record:
    """One input record: where it is (for messages), the original row (written back out) and its three texts."""

    index: int  # 0-based position in the input
    where: str  # "line 7" or "record 7"
    row: dict  # the original record, unchanged
    instruction: str
    input: str
    output: str


def detect_format(path) -> str:
    """The format named by the file's suffix (case-insensitive)."""
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: cannot tell the format from the suffix (accepted: {', '.join(SUFFIXES)}); "
                         "pass --format")
    return fmt


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def _type(value) -> str:
    return TYPE_NAMES.get(type(value), type(value).__name__)


def _name(text: str) -> str:
    """A name taken from the data, escaped where needed so that a message stays one printable line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


# --- JSON parsing that never alters a value silently -------------------------------------------------------

class _Bad:
    """Stands in for a JSON value Python would reject or alter (NaN, 1e999, duplicate keys, a 5000-digit
    integer), so that the error can name the record and the field instead of failing the whole parse."""

    def __init__(self, message: str):
        self.message = message


def _loads(text: str):
    """json.loads with _Bad markers; also says whether the value needs _check (a marker was made, or the text
    escapes a surrogate, which may be a lone one)."""
    made = []

    def bad(message):
        made.append(message)
        return _Bad(message)

    def number(text):
        value = float(text)
        return value if math.isfinite(value) else bad(f"number {text} is out of range")

    def integer(text):
        try:
            return int(text)
        except ValueError:
            return bad(f"integer of {len(text)} digits is too long")

    def obj(pairs):
        row = dict(pairs)
        if len(row) == len(pairs):
            return row
        seen: set = set()
        return bad(f"duplicate key '{_name(next(k for k, _ in pairs if k in seen or seen.add(k)))}'")

    value = json.loads(text, parse_constant=lambda name: bad(f"invalid JSON: {name} is not allowed"),
                       parse_float=number, parse_int=integer, object_pairs_hook=obj)
    return value, bool(made) or ESCAPED_SURROGATE.search(text) is not None


def _problem(value) -> str | None:
    """What is wrong with a parsed value: a _Bad marker or a lone surrogate anywhere in it."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _Bad):
            return v.message
        if isinstance(v, str):
            if m := SURROGATE.search(v):
                return f"invalid Unicode: lone surrogate \\u{ord(m.group()):04x}"
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _check(path, where: str, row) -> None:
    """Raise for a _Bad marker or a lone surrogate in a parsed row, naming the top-level field that holds it."""
    if not isinstance(row, dict):
        if problem := _problem(row):
            raise InputError(path, where, problem)
        return
    for k, v in row.items():
        if problem := _problem(k):
            raise InputError(path, where, f"{problem} in a key")
        if problem := _problem(v):
            raise InputError(path, where, problem, _name(k))


# --- records ---------------------------------------------------------------------------------------------

def _conversation(path, where, row) -> tuple[str, str, str]:
    """instruction = the first user turn, output = the first assistant turn after it, input = the first system
    turn before it ("" if none). Other turns, and every turn after that reply, are not part of the text."""
    key = "messages" if "messages" in row else "conversations"
    role_key, text_key, roles = STYLES[key]
    turns = row[key]
    if not isinstance(turns, list):
        raise InputError(path, where, f"expected an array of turns, got {_type(turns)}", key)
    system, instruction = None, None
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise InputError(path, where, f"turn {n}: expected an object, got {_type(turn)}", key)
        for k in (role_key, text_key):
            if k not in turn:
                raise InputError(path, where, f"turn {n}: missing '{k}'", key)
            if not isinstance(turn[k], str):
                raise InputError(path, where, f"turn {n}: '{k}': expected a string, got {_type(turn[k])}", key)
        role, text = roles.get(turn[role_key]), turn[text_key]
        if role is None:
            raise InputError(path, where, f"turn {n}: unknown {role_key} '{_name(turn[role_key])}' "
                                          f"(accepted: {', '.join(roles)})", key)
        if instruction is None and role == "system" and system is None:
            system = text
        elif instruction is None and role == "user":
            instruction = text
        elif instruction is not None and role == "assistant":
            return instruction, system or "", text
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


# --- readers ---------------------------------------------------------------------------------------------

def _decode(path, data: bytes, line: int) -> str:
    """Strict UTF-8; an invalid byte is reported at its line (`line` is the number of data's first line)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line += data[: err.start].count(b"\n")
        raise InputError(path, f"line {line}", f"invalid UTF-8 (byte 0x{data[err.start]:02x})") from None


def _lines(path, file) -> Iterator[str]:
    """The physical lines of a binary file (split at \\n, endings kept), decoded one by one; BOM dropped."""
    for number, raw in enumerate(file, 1):
        text = _decode(path, raw, number)
        yield text[1:] if number == 1 and text.startswith("\ufeff") else text


def _json(path, fields) -> Iterator[Record]:
    text = _decode(path, Path(path).read_bytes(), 1).removeprefix("\ufeff")
    if not text.strip():
        return
    try:
        rows, suspect = _loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, f"line {err.lineno}, column {err.colno}", f"invalid JSON: {err.msg}") from None
    except RecursionError:
        raise InputError(path, None, "invalid JSON: nested too deeply") from None
    if isinstance(rows, _Bad):
        raise InputError(path, None, rows.message)
    if not isinstance(rows, list):
        raise InputError(path, None, f"expected a JSON array of records, got {_type(rows)}")
    for i, row in enumerate(rows):
        if suspect:
            _check(path, f"record {i + 1}", row)
        yield _record(path, i, f"record {i + 1}", row, fields)


def _jsonl(path, fields) -> Iterator[Record]:
    with open(path, "rb") as f:
        for index, text in enumerate(_lines(path, f)):
            where = f"line {index + 1}"
            if not text.strip():
                raise InputError(path, where, "empty line")
            try:
                row, suspect = _loads(text)
            except json.JSONDecodeError as err:
                raise InputError(path, where, f"invalid JSON: {err.msg}") from None
            except RecursionError:
                raise InputError(path, where, "invalid JSON: nested too deeply") from None
            if suspect:
                _check(path, where, row)
            yield _record(path, index, where, row, fields)


def _csv(path, fields) -> Iterator[Record]:
    with open(path, "rb") as f:
        reader = csv.reader(_lines(path, f), strict=True)  # strict: a stray or unclosed quote is an error
        index, start = 0, 1  # start: the line where the next record begins
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise InputError(path, f"line {start}", f"invalid CSV: {err}") from None
            if start == 1:
                header = cells
                for name in header:
                    if header.count(name) > 1:
                        raise InputError(path, "line 1", f"the header has column '{_name(name)}' twice")
                for name in (fields.instruction, fields.output):
                    if name not in header:
                        raise InputError(path, "line 1", f"the header has no column '{name}'")
            elif len(cells) != len(header):
                raise InputError(path, f"line {start}",
                                 f"expected {len(header)} cells like the header, got {len(cells)}")
            else:
                yield _record(path, index, f"line {start}", dict(zip(header, cells)), fields)
                index += 1
            start = reader.line_num + 1


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError("Parquet needs pyarrow: pip install 'car-onnx[parquet]'") from None
    return pyarrow


def _parquet(path, fields) -> Iterator[Record]:
    pa = _pyarrow()
    index = 0
    try:
        for batch in pa.parquet.ParquetFile(str(path)).iter_batches():
            for row in batch.to_pylist():
                yield _record(path, index, f"record {index + 1}", row, fields)
                index += 1
    except (pa.ArrowException, OSError) as err:
        raise InputError(path, None, f"cannot read Parquet: {' '.join(str(err).split())}") from None


READERS = {"json": _json, "jsonl": _jsonl, "csv": _csv, "parquet": _parquet}


def iter_records(path, *, fmt: str | None = None, fields: FieldMap = FieldMap()) -> Iterator[Record]:
    """The records of a dataset, validated one by one as they are read; an input with no records is an error.
    Duplicates are kept as separate records; empty strings are valid values; nothing is skipped or coerced."""
    reader = READERS[_check_format(fmt or detect_format(path))]
    if not Path(path).is_file():
        raise InputError(path, None, "no such file")
    count = 0
    try:
        for record in reader(path, fields):
            count += 1
            yield record
    except OSError as err:
        raise InputError(path, None, f"cannot read: {err.strerror or err}") from None
    if count == 0:
        raise InputError(path, None, "no records")


# --- writer ----------------------------------------------------------------------------------------------

class RecordWriter:
    """Writes rows to a temporary file beside `path`; fsynced and renamed into place only when the `with` block
    completes, deleted if it fails. JSON and JSONL are written as they come; CSV and Parquet at the end."""

    def __init__(self, path, fmt: str):
        self.path, self.fmt, self.count, self.buffered = Path(path), _check_format(fmt), 0, []
        if fmt == "parquet":
            _pyarrow()  # fail before any work if it is missing

    def __enter__(self):
        # Named by hand rather than with tempfile.mkstemp, whose 0600 mode would end up on the output.
        self.tmp = self.path.with_name(f".{self.path.name}.{os.urandom(6).hex()}.tmp")
        self.file = open(self.tmp, "x", encoding="utf-8", newline="")
        if self.fmt == "json":
            self.file.write("[")
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
        else:
            self.buffered.append(dict(row))
        self.count += 1

    def _finish(self) -> None:
        header = list(dict.fromkeys(k for row in self.buffered for k in row))
        if self.fmt == "json":
            self.file.write("\n]\n" if self.count else "]\n")
        elif self.fmt == "csv":
            writer = csv.writer(self.file)
            writer.writerow(header)
            writer.writerows([_cell(row.get(k)) for k in header] for row in self.buffered)
        elif self.fmt == "parquet":
            self.file.close()
            pa = _pyarrow()
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


def open_writer(path, fmt: str) -> RecordWriter:
    """A RecordWriter for `path` in format `fmt`, to use as a context manager."""
    return RecordWriter(path, fmt)
