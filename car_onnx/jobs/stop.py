"""An orderly stop on SIGTERM (a scheduler's time limit) as on Ctrl-C: the signal becomes an exception in the main
thread, so every `finally` runs (temporary files removed, finished chunks kept), and the last line says how to
resume."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM (a BaseException, like KeyboardInterrupt: no `except Exception`
    swallows it)."""


def _raise(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not break the cleanup of the first
    raise Terminated()


@contextmanager
def sigterm_stops():
    """Within the block, SIGTERM raises Terminated in the main thread (elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_message(signame: str, work_dir, has_work_dir: bool) -> str:
    """The last line of an interrupted job: where its finished work is and how to resume."""
    text = f"interrupted ({signame})"
    if not has_work_dir:
        return text
    if work_dir is not None:
        return f"{text}; finished chunks are kept in {work_dir}: run the same command again to resume"
    return (
        f"{text}; the work was discarded (it was in a temporary work dir): pass --work-dir DIR to keep "
        "finished chunks and resume"
    )
