"""Reading instruction datasets (JSON array, JSONL, CSV, Parquet), streamed and validated record by record. Every bad
record is an InputError naming the file, the line or record, and the field."""

from __future__ import annotations

import codecs
import csv
import glob
import json
import math
import re
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputError, UsageError
from .records import FieldMap, Record, make_record, printable, type_name

FORMATS = ("json", "jsonl", "csv", "parquet")
SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
SURROGATE = re.compile("[\ud800-\udfff]")
ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def detect_format(path) -> str:
    """The format named by the file's suffix (case-insensitive)."""
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{path}: cannot tell the format from the suffix (accepted: {', '.join(SUFFIXES)}); pass {{format}}=NAME",
            "format",
        )
    return fmt


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"{{format}} must be one of {', '.join(FORMATS)}, got {fmt!r}", "format")
    return fmt


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
        return bad(f"duplicate key '{printable(next(k for k, _ in pairs if k in seen or seen.add(k)))}'")

    decoder = json.JSONDecoder(
        parse_constant=lambda name: bad(f"invalid JSON: {name} is not allowed"),
        parse_float=number,
        parse_int=integer,
        object_pairs_hook=obj,
    )
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
            raise InputError(path, where, problem, printable(k))


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
            fault = InputError(
                path, f"line {line + valid.count(NEWLINE)}", f"invalid UTF-8 (byte 0x{err.object[err.start]:02x})"
            )
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
        return make_record(path, index, where, row, fields)
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
    raise InputError(
        path,
        None,
        value.message if isinstance(value, _Bad) else f"expected a JSON array of records, got {type_name(value)}",
    )


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
                        raise InputError(path, "line 1", f"the header has column '{printable(name)}' twice")
                for name in (fields.instruction, fields.output):
                    if name not in header:
                        raise InputError(path, "line 1", f"the header has no column '{name}'")
            elif len(cells) != len(header):
                err = InputError(
                    path, f"line {start}", f"expected {len(header)} cells like the header, got {len(cells)}"
                )
                if reject is None:
                    raise err
                reject(err, cells)
            else:
                record = _accept(path, index, f"line {start}", dict(zip(header, cells)), fields, reject)
                if record is not None:
                    index += 1
                    yield record
            start = reader.line_num + 1


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError("Parquet needs pyarrow: pip install 'car-onnx[parquet]'") from None
    return pyarrow


def _parquet(path, fields, reject) -> Iterator[Record]:
    pa = require_pyarrow()
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


def shards_of(input) -> tuple[Path, ...]:
    """The files of an input: the file itself; a directory's dataset files, sorted by name; or the files a glob
    pattern matches, sorted."""
    path = Path(input)
    if path.is_dir():
        found = sorted(f for f in path.iterdir() if f.suffix.lower() in SUFFIXES and f.is_file())
        if not found:
            raise InputError(path, None, f"a directory with no dataset files ({', '.join(SUFFIXES)})")
        return tuple(found)
    if not path.exists() and any(c in str(input) for c in "*?["):
        found = sorted(Path(f) for f in glob.glob(str(input)) if Path(f).is_file())
        if not found:
            raise InputError(input, None, "no file matches this pattern")
        return tuple(found)
    return (path,)


def check_input(path) -> None:
    """Before any work: the input is a file this process can open for reading."""
    if not Path(path).is_file():
        raise InputError(path, None, "no such file" if not Path(path).exists() else "not a file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise InputError(path, None, f"cannot read: {err.strerror or err}") from None


def iter_records(
    path, *, fmt: str | None = None, fields: FieldMap = FieldMap(), reject: Reject | None = None
) -> Iterator[Record]:
    """The records of a dataset, streamed and validated one by one; an input with no records is an error.
    Duplicates are kept as separate records; empty strings are valid values; nothing is coerced.
    By default the first bad record raises its InputError; with `reject`, a bad record (one that can be told
    apart from the others) is handed to it and reading goes on. Record.index counts the accepted records."""
    reader = READERS[check_format(fmt or detect_format(path))]
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
