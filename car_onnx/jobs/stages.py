"""What a job tells its caller: Stages (each stage's time, a progress hook and a message hook, which the CLI
replaces with bars or log lines) and the RunSummary it returns."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path


class Stages:
    """Timing of each stage, a progress hook and a message hook, which the CLI replaces with bars or log lines."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def progress(self, name: str, total: int | None):
        return nullcontext(lambda n: None)

    def note(self, message: str) -> None:
        pass

    @contextmanager
    def stage(self, name: str, total: int | None = None):
        start = time.perf_counter()
        with self.progress(name, total) as advance:
            yield advance
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class RunSummary:
    """What a file job did, for the CLI's summary line (and `--show`)."""

    records: int
    selected: int = 0
    top: int = 0  # of the selected, how many from the n1 block (the rest are cluster picks)
    clusters: int = 0
    rejected: int = 0
    duplicates: dict = field(default_factory=dict)  # "exact" / "near" -> rows dropped before ranking
    rejects_path: Path | None = None
    seconds: dict = field(default_factory=dict)
    shown: list = field(default_factory=list)  # select(show=True): (row, record) of each selected row, in order
