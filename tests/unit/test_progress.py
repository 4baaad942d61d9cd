"""The shared progress bar (``processor.progress``) and the demo's drain progress."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from demo.run import drain_progress
from processor.progress import CountBar, rate
from processor.status import PartitionStatus


def _console(*, terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120), out


def test_a_bar_in_a_pipe_prints_its_final_count_once() -> None:
    console, out = _console(terminal=False)
    with CountBar(console, "publishing", 10_000) as bar:
        bar.update(5_000)
        bar.update(10_000)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1, out.getvalue()
    assert "publishing" in lines[0]
    assert "10000/10000" in lines[0]
    assert "events/s" in lines[0]


def test_a_disabled_bar_prints_nothing_but_keeps_the_counts() -> None:
    console, out = _console(terminal=True)
    with CountBar(console, "publishing", 3, enabled=False) as bar:
        bar.update(3)
    assert out.getvalue() == ""
    assert bar.completed == 3
    assert bar.seconds > 0


def test_a_bar_on_a_terminal_draws_while_it_runs() -> None:
    console, out = _console(terminal=True)
    with CountBar(console, "processing", 0) as bar:
        bar.update(40, total=100)
    assert "processing" in out.getvalue()
    assert "40/100" in out.getvalue()
    assert bar.total == 100


def test_the_rate_is_the_count_over_the_time_and_the_clock_stops_on_exit() -> None:
    console, _ = _console(terminal=False)
    with CountBar(console, "x", 10, enabled=False) as bar:
        bar.update(10)
    stopped = bar.seconds
    assert bar.seconds == stopped  # no longer running
    assert bar.rate == pytest.approx(10 / stopped)


def test_a_negative_count_is_refused() -> None:
    console, _ = _console(terminal=False)
    with CountBar(console, "x", 1, enabled=False) as bar, pytest.raises(ValueError):
        bar.update(-1)


def test_rate_text() -> None:
    assert rate(0, 1.0) == "-"
    assert rate(10, 0.0) == "-"
    assert rate(25_000, 2.0) == "12,500 events/s"


def _status(partition: int, checkpoint: int, tail: int) -> PartitionStatus:
    return PartitionStatus(partition, checkpoint, tail, tail - checkpoint, "host:1")


def test_drain_progress_counts_offsets_since_the_start_and_what_is_left() -> None:
    # Before: checkpoints at 9 and -1 (10 records consumed); now 19 and 4, tails 29 and 4.
    done, total = drain_progress([_status(0, 19, 29), _status(1, 4, 4)], consumed_before=10)
    assert (done, total) == (15, 25)


def test_drain_progress_is_complete_exactly_at_zero_lag() -> None:
    done, total = drain_progress([_status(0, 29, 29), _status(1, 4, 4)], consumed_before=10)
    assert done == total == 25
    assert drain_progress([_status(0, -1, -1)], consumed_before=0) == (0, 0)
