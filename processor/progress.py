"""Progress bars of the long commands (replay, ``publish``, the demo): one layout, on rich.

``new_progress`` is the layout every bar shares (description, bar, done/total, events/s,
elapsed, ETA); replay adds its phases on it (``processor.replay.progress``). ``CountBar`` is a
single bar counting toward a total, for a command that knows how far it is (``just publish``:
events confirmed; the demo: log records consumed). Rates are events per second on the
monotonic clock; nothing here reads the wall clock.

On a console that is not a terminal (a pipe, a CI log) rich draws nothing while the bar runs
and prints its final state once, when it stops; ``CountBar(enabled=False)`` prints nothing at
all.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """``12,345 events/s``: the task's ``rate`` field (the caller measures it)."""

    def render(self, task: Task) -> Text:
        """The rate, right-aligned in a fixed width so the bars of several tasks line up."""
        value = float(task.fields.get("rate", 0.0))
        return Text(f"{value:>8,.0f} events/s", style="progress.data.speed")


def new_progress(console: Console, label_width: int = 17) -> Progress:
    """A rich ``Progress`` with the product's columns, not started.

    Args:
        console: where the bars go (the commands use stderr, so stdout carries only results).
        label_width: characters of the description column (descriptions are padded to it).

    Tasks must carry a ``rate`` field (events per second), e.g.
    ``progress.add_task("publishing", total=n, rate=0.0)``.
    """
    return Progress(
        TextColumn(f"{{task.description:<{label_width}}}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        speed_estimate_period=5.0,
    )


class CountBar:
    """One bar counting toward a total; the rate runs from when the bar was entered.

    Args:
        console: where the bar goes.
        description: its label (``"publishing"``).
        total: the count it is to reach (it may be raised later by ``update``).
        enabled: False shows nothing (a command whose output is not a terminal and that ends
            with a line of its own); the counts are kept either way.

    Use as a context manager; ``update`` from the thread that entered it.
    """

    def __init__(
        self, console: Console, description: str, total: int, *, enabled: bool = True
    ) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self._progress = new_progress(console) if enabled else None
        self._task: TaskID | None = None
        self._started = time.monotonic()
        self._stopped: float | None = None

    def __enter__(self) -> CountBar:
        self._started = time.monotonic()
        self._stopped = None
        if self._progress is not None:
            self._task = self._progress.add_task(self.description, total=self.total, rate=0.0)
            self._progress.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._stopped = time.monotonic()
        if self._progress is not None:
            self._progress.stop()

    @property
    def seconds(self) -> float:
        """Seconds from entering the bar to leaving it (to now while it runs)."""
        end = time.monotonic() if self._stopped is None else self._stopped
        return end - self._started

    @property
    def rate(self) -> float:
        """Completed count per second since the bar was entered (0 before any time passed)."""
        elapsed = self.seconds
        return self.completed / elapsed if elapsed > 0 else 0.0

    def update(self, completed: int, total: int | None = None) -> None:
        """Set the count done so far (and the total, when it changed).

        Raises:
            ValueError: ``completed`` is negative.
        """
        if completed < 0:
            raise ValueError(f"a progress count cannot be negative ({completed})")
        self.completed = completed
        if total is not None:
            self.total = total
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, total=self.total, rate=self.rate)


def rate(records: int, seconds: float) -> str:
    """``"12,345 events/s"`` (``"-"`` when nothing was timed)."""
    if seconds <= 0 or records == 0:
        return "-"
    return f"{records / seconds:,.0f} events/s"
