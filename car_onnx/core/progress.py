"""When a step's progress is told: only once the step has run DELAY seconds (as tqdm's `delay`). A step that ends
sooner says nothing, so a small job's log holds its result and not ten lines about a 0.1 s KMeans; a long step
says everything it says today, its opening line as soon as it is due."""

from __future__ import annotations

import time
from typing import Callable

DELAY = 2.0  # seconds a step runs before anything is said of it


class Pace:
    """Whether a step has run `delay` seconds (`clock`: seconds, monotonic); once due it stays due."""

    def __init__(self, *, delay: float | None = None, clock: Callable[[], float] | None = None):
        self.delay, self.clock = DELAY if delay is None else delay, clock or time.monotonic
        self.start, self._due = self.clock(), False

    @property
    def due(self) -> bool:
        self._due = self._due or self.clock() - self.start >= self.delay
        return self._due


class Step:
    """One step's lines to `say`, paced: `opening` is held back, each `line` is said only once the step is due (the
    opening first), and `close` says the closing line if the step is due by then (the opening too if nothing was
    said yet): a step that ends within the delay says nothing at all. `say` None: nothing is ever said."""

    def __init__(
        self,
        say: Callable[[str], None] | None,
        opening: str | None = None,
        *,
        delay: float | None = None,
        clock: Callable[[], float] | None = None,
    ):
        self.say, self.opening, self.pace = say, opening, Pace(delay=delay, clock=clock)

    def line(self, text: str) -> None:
        """A progress line: said if the step is due, else dropped (a later line supersedes it)."""
        if self.say is not None and self.pace.due:
            self._open()
            self.say(text)

    def close(self, text: str | None = None) -> bool:
        """The step ended: its closing line `text`, if due. Returns whether anything of the step was said."""
        if self.say is None or not self.pace.due:
            return False
        self._open()
        if text is not None:
            self.say(text)
        return True

    def _open(self) -> None:
        if self.opening is not None:
            opening, self.opening = self.opening, None
            self.say(opening)
