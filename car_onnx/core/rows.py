"""Rows read a block at a time: the one interface through which clustering and the selection read embeddings,
scores and duplicate marks, in memory, on disk or on a cluster."""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 65_536  # rows read (and, in sample mode, assigned to clusters) at a time


class Rows:
    """The one interface through which clustering and the selection read rows (embeddings, scores, duplicate
    marks), a block at a time: ArrayRows for an array in memory or on disk (a numpy array, a memory map, a
    columns.Column), and the row sources that do something differently (workdir.ChunkRows reads a work dir's chunk
    files; car_onnx.ray's assign rows to clusters and run the selection's per-block work on a cluster) override
    what they change."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, rows) -> np.ndarray:
        raise NotImplementedError

    def blocks(self):
        """(first row, its rows), BLOCK_ROWS rows at a time."""
        for first in range(0, len(self), BLOCK_ROWS):
            yield first, self[first : first + BLOCK_ROWS]

    def assign(self, pca, km, out) -> None:
        """The cluster id of every row into `out`, block by block in this process."""
        from .clustering import assign

        for first, block in self.blocks():
            out[first : first + len(block)] = assign(block, pca, km)

    def map(self, fn, items):
        """The selection's per-block work over `items`: here, in this process."""
        return map(fn, items)


class ArrayRows(Rows):
    """An array-like (anything with len() and slices) as Rows."""

    def __init__(self, array):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, rows):
        return self.array[rows]


def rows_of(rows) -> Rows:
    """`rows` as Rows: itself if it is one, else wrapped as ArrayRows."""
    return rows if isinstance(rows, Rows) else ArrayRows(rows)


def blocks(rows):
    """(first row, its block) of `rows` (see Rows.blocks)."""
    return rows_of(rows).blocks()


def rows_in(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The row numbers of sorted `rows` in [start, stop): those a block starting at row `start` holds."""
    return rows[np.searchsorted(rows, start) : np.searchsorted(rows, stop)]
