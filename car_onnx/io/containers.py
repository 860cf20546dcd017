"""Python containers as records: lists and other iterables of dicts, pandas DataFrames, `datasets.Dataset`s and
dicts of columns (what `Dataset.map(batched=True)` passes). pandas and datasets are never imported here: their
objects are recognised by the module of their type, so the runtime's dependencies do not grow."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

from ..errors import InputError, UsageError
from .records import FieldMap, Record, make_record

LABEL = "data"  # how errors name a Python container, in place of a file name
BATCH = 4096  # rows converted at a time from a DataFrame or a Dataset


def kind(data) -> str:
    """ "DataFrame", "Dataset", "columns" (a mapping of equal-length columns), "list" (any sequence of rows) or
    "iterable" (read once, streamed)."""
    package = type(data).__module__.split(".")[0]
    if package == "pandas" and hasattr(data, "iloc"):
        return "DataFrame"
    if package == "datasets" and hasattr(data, "iter") and hasattr(data, "select"):
        return "Dataset"
    if isinstance(data, Mapping):
        return "columns"
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise UsageError(
            f"{{data}} must be records (a list or iterable of dicts, a DataFrame, a Dataset or a dict "
            f"of columns), got {type(data).__name__}",
            "data",
        )
    return "list" if isinstance(data, Sequence) else "iterable"


def _columns(batch: Mapping) -> Iterator[dict]:
    names = list(batch)
    columns = [batch[name] for name in names]
    if any(isinstance(c, (str, bytes)) or not isinstance(c, Sequence) for c in columns):
        raise UsageError(
            "{data} is a mapping but not of columns (each value a list of the same length); pass a list of records",
            "data",
        )
    lengths = {len(c) for c in columns}
    if len(lengths) > 1:
        raise UsageError(f"{{data}}: columns of different lengths {sorted(lengths)}", "data")
    for values in zip(*columns):
        yield dict(zip(names, values))


def _missing(value) -> bool:
    """pandas' missing values (NaN, NA, NaT), which stand where a record has no value."""
    return (isinstance(value, float) and math.isnan(value)) or type(value).__name__ in ("NAType", "NaTType")


def rows(data) -> Iterator[Mapping]:
    """The rows of `data` as mappings, in order; DataFrames and Datasets are converted a batch at a time."""
    what = kind(data)
    if what == "DataFrame":
        for start in range(0, len(data), BATCH):
            for row in data.iloc[start : start + BATCH].to_dict("records"):
                yield {str(k): (None if _missing(v) else v) for k, v in row.items()}
    elif what == "Dataset":
        for batch in data.iter(batch_size=BATCH):
            yield from _columns(batch)
    elif what == "columns":
        yield from _columns(data)
    else:
        yield from data


def records(data, fields: FieldMap) -> Iterator[Record]:
    """The records of `data`, validated one by one: a bad row raises an InputError naming it ("data: row 3:
    field 'output': ...", rows counted from 0 as Python indexes them)."""
    for i, row in enumerate(rows(data)):
        yield make_record(LABEL, i, f"row {i}", row, fields)


def take(data, indices) -> object:
    """The rows of `data` at `indices`, in the container it came in."""
    what = kind(data)
    positions = [int(i) for i in indices]
    if what == "DataFrame":
        return data.iloc[positions]
    if what == "Dataset":
        return data.select(positions)
    if what == "columns":
        return {name: [column[i] for i in positions] for name, column in data.items()}
    if what == "list":
        return [data[i] for i in positions]
    raise UsageError("take: {data} was a one-pass iterable, its rows are gone; select from a list to take them", "data")


def no_records() -> InputError:
    return InputError(LABEL, None, "no records")
