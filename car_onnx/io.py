"""Reading instruction datasets (JSON array, JSONL, CSV, Parquet; Alpaca fields or conversations) and writing
results atomically. Every bad record is an InputError naming the file, the line or record, and the field."""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, fields as dc_fields
from pathlib import Path
from typing import Callable, Iterator

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


def _decoder() -> tuple[json.JSONDecoder, list]:
    """A JSON decoder that turns values Python would reject or alter into _Bad markers, and the list of the
    markers' messages it has made (clear it before each value to know whether that value holds one)."""
    made: list[str] = []

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

    decoder = json.JSONDecoder(parse_constant=lambda name: bad(f"invalid JSON: {name} is not allowed"),
                               parse_float=number, parse_int=integer, object_pairs_hook=obj)
    return decoder, made


def _loads(text: str):
    """Decode one JSON document with _Bad markers; also says whether the value needs _check (a marker was made,
    or the text escapes a surrogate, which may be a lone one)."""
    decoder, made = _decoder()
    value = decoder.decode(text)
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

BLOCK = 1 << 20  # bytes read at a time when streaming a JSON array
SPACE = re.compile(r"[ \t\n\r]*")
NEWLINE = b"\n"
Reject = Callable[[InputError, object], None]  # (the record's error, its row or raw text) -> None


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


def _blocks(path, file) -> Iterator[str]:
    """The text of a binary file in blocks of about BLOCK bytes, strictly UTF-8; BOM dropped. At an invalid byte
    the valid text before it is handed out first and the error raised on the next request: a reader that finds a
    fault in that text reports it, as it would with any other block size."""
    decoder, line, first = codecs.getincrementaldecoder("utf-8")(), 1, True
    while True:
        data, fault = file.read(BLOCK), None
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as err:  # err.object includes bytes held over from the last block
            valid = err.object[: err.start]
            text = valid.decode("utf-8")
            fault = InputError(path, f"line {line + valid.count(NEWLINE)}",
                               f"invalid UTF-8 (byte 0x{err.object[err.start]:02x})")
        line += data.count(b"\n")
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if text:
            yield text
        if fault is not None:
            raise fault
        if not data:
            return


def _accept(path, index: int, where: str, row, fields, reject: Reject | None, check: bool = False):
    """The Record of a parsed row; with `reject`, a record-level InputError is handed to it (returns None)."""
    try:
        if check:
            _check(path, where, row)
        return _record(path, index, where, row, fields)
    except InputError as err:
        if reject is None:
            raise
        reject(err, row)
        return None


def _json_document(path, text: str):
    """A whole JSON text that is not an array: parsed only to say what it is instead."""
    try:
        value, _ = _loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, f"line {err.lineno}, column {err.colno}", f"invalid JSON: {err.msg}") from None
    except RecursionError:
        raise InputError(path, None, "invalid JSON: nested too deeply") from None
    raise InputError(path, None, value.message if isinstance(value, _Bad) else
                     f"expected a JSON array of records, got {_type(value)}")


LOOKAHEAD = 16  # characters past a JSON error's position that can still change it (-Infinity, a \\uXXXX escape)
NUMBER_TAIL = re.compile(r"[.eE][-+]?")  # what may end a buffer in the middle of a number ("1." of "1.5")


def _settled(err: json.JSONDecodeError, buf: str) -> bool:
    """Whether a JSON error stands whatever text follows `buf`: not a string cut off by its end, and not within
    LOOKAHEAD characters of it."""
    return not err.msg.startswith("Unterminated string") and err.pos + LOOKAHEAD <= len(buf)


def _may_go_on(buf: str, start: int, end: int) -> bool:
    """Whether an element decoded from buf[start:end] may continue past the end of `buf`: it reaches the end, or
    it is a number followed only by the start of a fraction or an exponent."""
    return end == len(buf) or (buf[start] in "-0123456789" and NUMBER_TAIL.fullmatch(buf, end) is not None)


def _json(path, fields, reject) -> Iterator[Record]:
    """A JSON array, streamed: one element is decoded at a time from a buffer trimmed as it goes, so memory
    holds about one record, whatever the file's size or layout (one line or many). The error reported is the first
    fault met reading from the start, whatever the block size: invalid JSON that the text before an invalid byte
    already shows, else the invalid byte."""
    decoder, made = _decoder()
    with open(path, "rb") as f:
        blocks = _blocks(path, f)
        buf, pos, line, col = "", 0, 1, 0  # buf starts at `line`, after `col` characters of that line

        def more() -> bool:
            nonlocal buf
            block = next(blocks, None)
            buf += block or ""
            return block is not None

        def space() -> None:
            nonlocal pos
            pos = SPACE.match(buf, pos).end()
            while pos == len(buf) and more():
                pos = SPACE.match(buf, pos).end()

        def located(line_in_buf: int, column: int, message: str) -> InputError:
            column = column + col if line_in_buf == 1 else column
            return InputError(path, f"line {line + line_in_buf - 1}, column {column}", f"invalid JSON: {message}")

        def at(p: int, message: str) -> InputError:
            return located(buf.count("\n", 0, p) + 1, p - buf.rfind("\n", 0, p), message)

        space()
        if pos == len(buf):
            return
        if buf[pos] != "[":
            while more():
                pass
            _json_document(path, buf)
        pos += 1
        space()
        index = count = 0
        while not buf.startswith("]", pos):  # (an empty array has no elements)
            while True:  # decode one element, reading on while more text could change the outcome
                made.clear()
                try:
                    row, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as err:
                    if not _settled(err, buf) and more():
                        continue
                    raise located(err.lineno, err.colno, err.msg) from None
                except RecursionError:
                    raise InputError(path, None, "invalid JSON: nested too deeply") from None
                if not _may_go_on(buf, pos, end) or not more():
                    break
            count += 1
            check = bool(made) or ESCAPED_SURROGATE.search(buf, pos, end) is not None
            record = _accept(path, index, f"record {count}", row, fields, reject, check)
            if record is not None:
                index += 1
                yield record
            pos = end
            space()
            if buf.startswith("]", pos):
                break
            if not buf.startswith(",", pos):
                raise at(pos, "Expecting ',' delimiter")
            pos += 1
            if pos > BLOCK:  # drop what was read, keeping the position of what remains
                nl = buf.rfind("\n", 0, pos)
                if nl >= 0:
                    line, col = line + buf.count("\n", 0, pos), pos - nl - 1
                else:
                    col += pos
                buf, pos = buf[pos:], 0
            space()
        pos += 1
        space()
        if pos < len(buf):
            raise at(pos, "Extra data")


def _jsonl(path, fields, reject) -> Iterator[Record]:
    with open(path, "rb") as f:
        index = 0
        for number, raw in enumerate(f, 1):
            where = f"line {number}"
            try:
                text = _decode(path, raw, number)
                text = text[1:] if number == 1 and text.startswith("\ufeff") else text
                if not text.strip():
                    raise InputError(path, where, "empty line")
                try:
                    row, suspect = _loads(text)
                except json.JSONDecodeError as err:
                    raise InputError(path, where, f"invalid JSON: {err.msg}") from None
                except RecursionError:
                    raise InputError(path, where, "invalid JSON: nested too deeply") from None
            except InputError as err:
                if reject is None:
                    raise
                reject(err, raw.decode("utf-8", "replace").rstrip("\r\n"))
                continue
            record = _accept(path, index, where, row, fields, reject, suspect)
            if record is not None:
                index += 1
                yield record


def _csv(path, fields, reject) -> Iterator[Record]:
    """Strict CSV with a header line. Invalid UTF-8 and broken quoting end the read (the rows after them cannot
    be told apart); a row with the wrong number of cells is a record-level error."""
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
                err = InputError(path, f"line {start}", f"expected {len(header)} cells like the header, got {len(cells)}")
                if reject is None:
                    raise err
                reject(err, cells)
            else:
                record = _accept(path, index, f"line {start}", dict(zip(header, cells)), fields, reject)
                if record is not None:
                    index += 1
                    yield record
            start = reader.line_num + 1


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError("Parquet needs pyarrow: pip install 'car-onnx[parquet]'") from None
    return pyarrow


def _parquet(path, fields, reject) -> Iterator[Record]:
    pa = _pyarrow()
    index = count = 0
    try:
        for batch in pa.parquet.ParquetFile(str(path)).iter_batches():
            for row in batch.to_pylist():
                count += 1
                record = _accept(path, index, f"record {count}", row, fields, reject)
                if record is not None:
                    index += 1
                    yield record
    except (pa.ArrowException, OSError) as err:
        raise InputError(path, None, f"cannot read Parquet: {' '.join(str(err).split())}") from None


READERS = {"json": _json, "jsonl": _jsonl, "csv": _csv, "parquet": _parquet}


def iter_records(path, *, fmt: str | None = None, fields: FieldMap = FieldMap(),
                 reject: Reject | None = None) -> Iterator[Record]:
    """The records of a dataset, streamed and validated one by one; an input with no records is an error.
    Duplicates are kept as separate records; empty strings are valid values; nothing is coerced.
    By default the first bad record raises its InputError; with `reject`, a bad record (one that can be told
    apart from the others) is handed to it and reading goes on. Record.index counts the accepted records."""
    reader = READERS[_check_format(fmt or detect_format(path))]
    if not Path(path).is_file():
        raise InputError(path, None, "no such file")
    count = 0
    try:
        for record in reader(path, fields, reject):
            count += 1
            yield record
    except OSError as err:
        raise InputError(path, None, f"cannot read: {err.strerror or err}") from None
    if count == 0:
        raise InputError(path, None, "no records")


# --- writer ----------------------------------------------------------------------------------------------

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
        self.path, self.fmt, self.count, self.buffered = Path(path), _check_format(fmt), 0, []
        self.columns = list(columns) if columns is not None and fmt == "csv" else None
        if fmt == "parquet":
            _pyarrow()  # fail before any work if it is missing

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


def open_writer(path, fmt: str, columns: tuple[str, ...] | None = None) -> RecordWriter:
    """A RecordWriter for `path` in format `fmt`, to use as a context manager."""
    return RecordWriter(path, fmt, columns)
