"""Files written atomically: a temporary file beside the target, fsynced and renamed into place when complete,
deleted if the job fails; disk space reserved up front for memory-mapped arrays; an OSError of a write named by
its path. The lowest layer of output, below the record writers (io/writers.py), the work directory and the on-disk
columns."""

from __future__ import annotations

import errno
import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import CarError


def temp_path(path: Path) -> Path:
    """A hidden, unique name beside `path`. Named by hand: tempfile.mkstemp's 0600 mode would end up on the output."""
    return path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")


def create_locked(tmp: Path) -> int:
    """Create `tmp` (empty, new) and hold an flock on it while it is written: a temporary file nobody holds is a
    leftover of a killed run (see remove_stale_temps). Returns the descriptor that holds the lock."""
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def remove_stale_temps(path) -> list[Path]:
    """Remove the temporary files beside `path` (`.NAME.<hex>.tmp` and its Parquet parts) that a killed run left:
    those no live writer holds locked. Returns what was removed."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"([0-9a-f]{12})\.tmp(\.\d+)?")
    groups: dict[str, list[Path]] = {}
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match:
            groups.setdefault(match.group(1), []).append(path.parent / name)
    removed = []
    for key, files in groups.items():
        base = path.with_name(f".{path.name}.{key}.tmp")
        try:
            fd = os.open(base, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a running job's file
            for file in files:
                file.unlink(missing_ok=True)
                removed.append(file)
        finally:
            if fd is not None:
                os.close(fd)
    return sorted(removed)


class WriteError(CarError):
    """A file cannot be written (disk full, file size limit, quota, I/O error): names the file."""

    def __init__(self, path, err: OSError):
        super().__init__(f"{path}: cannot write: {err.strerror or err}")


@contextmanager
def naming(path) -> Iterator[None]:
    """Turn an OSError of the block (a write of `path`) into a WriteError naming `path`; not ENOMEM (a memory map
    over the address-space limit), which is memory running out."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOMEM:
            raise
        raise WriteError(path, err) from None


def create_npy(path, shape: tuple[int, ...]):
    """A float32 .npy of `shape`, memory-mapped for writing, its space reserved up front: a full disk is an
    OSError here, not a SIGBUS when the mapped pages are written."""
    import numpy as np

    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    fd = os.open(path, os.O_RDWR)
    try:
        reserve(fd)
    finally:
        os.close(fd)
    return array


def reserve(fd: int) -> None:
    """Reserve the disk space of the open file `fd`'s size, so that writing its mapped pages cannot find the disk
    full (a filesystem that cannot reserve: nothing done)."""
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


@contextmanager
def replacing(path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write; fsynced and renamed to `path` when the block
    completes, deleted if it fails (a write error names `path`)."""
    path = Path(path)
    tmp = temp_path(path)
    lock = None
    try:
        with naming(path):
            lock = create_locked(tmp)
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if lock is not None:
            os.close(lock)
