"""Per-record arrays on disk, for file jobs whose memory must not grow with their records (sample mode): a Column
is mapped only while a slice of it is read or written; the Index is what the scan keeps of every record."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import naming, reserve
from .rows import BLOCK_ROWS, blocks

BUCKETS = 256  # exact dedup: text keys spread over this many files by their first byte, deduplicated one at a time
KEYED = np.dtype([("key", "V16"), ("row", "<i8")])


class Column:
    """A 1-D array of `dtype` in a raw file of `n` rows [default: the file's], mapped only while a slice of it is
    read or written, so that its pages never pile up in the process's memory."""

    def __init__(self, path: Path, dtype, n: int | None = None):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.shape = (os.path.getsize(self.path) // self.dtype.itemsize if n is None else n,)
        self.ndim = 1

    @classmethod
    def create(cls, path: Path, dtype, n: int, fill=None) -> Column:
        """A new column of `n` rows (replacing any file at `path`), its space reserved: a full disk is an error
        here, not a SIGBUS when its pages are written; every row `fill`, if given."""
        with naming(path), open(path, "wb") as f:
            f.truncate(n * np.dtype(dtype).itemsize)
            reserve(f.fileno())
        column = cls(path, dtype, n)
        for first in range(0, n, BLOCK_ROWS) if fill is not None else ():
            column[first : first + BLOCK_ROWS] = fill
        return column

    def __len__(self) -> int:
        return self.shape[0]

    def _map(self, mode: str) -> np.memmap:
        return np.memmap(self.path, dtype=self.dtype, mode=mode, shape=self.shape)

    def __getitem__(self, index) -> np.ndarray:
        return np.array(self._map("r")[index])

    def __setitem__(self, index, values) -> None:
        with naming(self.path):
            self._map("r+")[index] = values  # unmapped at once; the page cache keeps what was written


def count_kept(duplicate_of) -> int:
    """The rows of `duplicate_of` (an array or a Column) that repeat no other (-1), counted a block at a time."""
    return sum(int((part < 0).sum()) for _, part in blocks(duplicate_of))


class Kept:
    """The row numbers of the rows of `duplicate_of` that repeat no other, as sorted positions among them are asked
    for (`kept[positions]`), found a block at a time: the `rows` of Clusterer.fit_assign without n of them in
    memory."""

    def __init__(self, duplicate_of, count: int):
        self.duplicate_of, self.count = duplicate_of, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, positions) -> np.ndarray:
        positions, out, seen = np.asarray(positions, dtype=np.int64), [], 0
        for first, part in blocks(self.duplicate_of):
            rows = np.flatnonzero(part < 0)
            mine = positions[np.searchsorted(positions, seen) : np.searchsorted(positions, seen + len(rows))]
            out.append(rows[mine - seen] + first)
            seen += len(rows)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def duplicates(keys) -> np.ndarray:
    """Per record, the first earlier record with the same key, or -1. `keys`: the 16-byte keys, as a list or
    joined in one bytes-like object (16 bytes a record in memory, not a dict of them)."""
    keys = np.frombuffer(b"".join(keys) if isinstance(keys, list) else bytes(keys), dtype=np.uint64).reshape(-1, 2)
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)  # first: a stable sort
    dup = first[inverse.reshape(-1)].astype(np.int64)
    dup[dup == np.arange(len(keys))] = -1
    return dup


class Index:
    """What the scan keeps of each record, in files in `root`, given in input order: its place (line or record
    number), and with `dedup` its 16-byte text key, written to one of BUCKETS files by the key's first byte so that
    exact duplicates are found one bucket at a time."""

    def __init__(self, root: Path, dedup: bool):
        self.root, self.dedup, self.n = Path(root), dedup, 0
        self.places = open(self.root / "places", "wb")
        self.buckets = [open(self.root / f"keys-{b:02x}", "wb") for b in range(BUCKETS)] if dedup else []

    def add(self, places: np.ndarray, keys: bytes | None) -> None:
        """The next records' places and (with dedup) their keys joined."""
        with naming(self.root / "places"):
            self.places.write(np.asarray(places, dtype="<i8").tobytes())
            if self.dedup:
                keyed = np.empty(len(places), dtype=KEYED)
                keyed["key"] = np.frombuffer(keys, dtype="V16")
                keyed["row"] = np.arange(self.n, self.n + len(places))
                bucket = np.frombuffer(keys, dtype=np.uint8)[::16].astype(np.int64) % BUCKETS
                order = np.argsort(bucket, kind="stable")
                bounds = np.searchsorted(bucket[order], np.arange(BUCKETS + 1))
                for b in np.flatnonzero(np.diff(bounds)):
                    self.buckets[b].write(keyed[order[bounds[b] : bounds[b + 1]]].tobytes())
        self.n += len(places)

    def finish(self) -> tuple[Column, Column, int | None]:
        """(each record's place, the earlier record each repeats or -1, how many repeat one: None without dedup),
        the first two on disk."""
        for f in (self.places, *self.buckets):
            f.close()
        places = Column(self.root / "places", np.int64, self.n)
        duplicate_of, repeated = Column.create(self.root / "duplicate_of", np.int64, self.n, fill=-1), 0
        for b in range(len(self.buckets)):
            keyed = np.fromfile(self.root / f"keys-{b:02x}", dtype=KEYED)  # rows ascending: input order
            first = duplicates(keyed["key"].tobytes())
            mine = first >= 0
            if mine.any():
                duplicate_of[keyed["row"][mine]] = keyed["row"][first[mine]]
                repeated += int(mine.sum())
        return places, duplicate_of, repeated if self.dedup else None
