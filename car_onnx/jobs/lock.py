"""One job per work directory: an exclusive flock on WORK_DIR/.lock, which holds the owner's pid. The kernel
releases the lock when its process ends in any way (kill -9 included), so a stale lock file is simply taken over."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ..errors import UsageError

NAME = ".lock"


@contextmanager
def _held(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    path = root / NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise UsageError(
                f"{root}: {{work_dir}} is in use by another car-onnx job (pid {owner}); wait for it "
                "to finish or choose another directory",
                "work_dir",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays (unlinking it would race with a job opening it)


def held(work_dir) -> contextmanager:
    """Hold the work directory's lock for the block (nothing to lock for a temporary work directory)."""
    return nullcontext() if work_dir is None else _held(Path(work_dir))
