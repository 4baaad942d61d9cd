"""What replay prints on stdout: the run summary and rates, the verify differences, a history.

Differences are plain aligned lines (``user  table  column: live X, replay Y``) so that they can
be read in a terminal, grepped and diffed; summaries and histories are rich tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from processor.progress import rate
from processor.replay.compare import Comparison, RowDiff
from processor.replay.history import History
from processor.replay.options import ReplayReport
from projections.fold import Friendship, level_of

#: Differing users printed by default; the count of all differing rows is printed too.
DEFAULT_USERS_SHOWN: Final = 10
#: Bytes of a raw body shown in a difference line.
_RAW_SHOWN: Final = 60


def format_instant(moment: datetime) -> str:
    """An instant as RFC 3339 in UTC with ``Z``, as the HTTP API writes it.

    ``2024-01-01T01:00:00+01:00`` becomes ``2024-01-01T00:00:00Z``; fractions are kept.
    """
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _value(value: Any) -> str:
    if isinstance(value, datetime):
        return format_instant(value)
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        return repr(raw[:_RAW_SHOWN]) + ("..." if len(raw) > _RAW_SHOWN else "")
    return repr(value) if isinstance(value, str) else str(value)


def _row_name(diff: RowDiff) -> str:
    if diff.table == "topic_metrics":
        return f"topic {diff.key[1]}"
    if diff.table == "friendships":
        return "friendship"
    if diff.table == "applied_events":
        return f"event {diff.key[0]}"
    if diff.table == "checkpoints":
        return f"partition {diff.key[0]} checkpoint"
    return f"dead letter p{diff.key[0]}@{diff.key[1]}"


def difference_lines(diff: RowDiff) -> list[str]:
    """One line per differing column of a row, naming both values (or the missing side)."""
    who = diff.user_id or "-"
    name = _row_name(diff)
    if diff.live is None or diff.replay is None:
        present = diff.replay if diff.live is None else diff.live
        side = "live" if diff.live is None else "replay"
        shown = ", ".join(f"{k}={_value(v)}" for k, v in (present or {}).items())
        return [f"  {who:<20} {name:<24} missing in {side}; the other side has {shown}"]
    return [
        f"  {who:<20} {name:<24} {column}: live {_value(diff.live[column])}, "
        f"replay {_value(diff.replay[column])}"
        for column in diff.differing_columns()
    ]


def print_comparison(
    console: Console, comparison: Comparison, users_shown: int = DEFAULT_USERS_SHOWN
) -> None:
    """The per-table counts, then (on differences) the first differing users' rows."""
    offsets = sum(o + 1 for o in comparison.checkpoints.values() if o >= 0)
    table = Table(title=f"live vs replay at the live checkpoints ({offsets:,} offsets)")
    for column in ("table", "live rows", "replay rows", "differing rows"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for t in comparison.tables:
        table.add_row(t.spec.name, f"{t.live_rows:,}", f"{t.replay_rows:,}", f"{t.differing:,}")
    console.print(table)
    if comparison.identical:
        console.print("verify: live and replay are identical", style="bold green")
        return
    total = sum(t.differing for t in comparison.tables)
    console.print(
        f"verify: live and replay DIFFER in {total:,} rows; first differing users:",
        style="bold red",
        highlight=False,
    )
    for user in comparison.differing_users(users_shown):
        _print_lines(console, _user_difference_lines(comparison, user))
    for t in comparison.tables:
        if t.spec.user_column is None:
            for diff in t.samples[:users_shown]:
                _print_lines(console, difference_lines(diff))


def _user_difference_lines(comparison: Comparison, user: str) -> list[str]:
    """A user's differing rows: projections first, then at most 3 lines per applied event."""
    lines = [
        line
        for t in comparison.tables
        if t.spec.name != "applied_events"
        for diff in t.samples
        if diff.user_id == user
        for line in difference_lines(diff)
    ]
    applied = next(t for t in comparison.tables if t.spec.name == "applied_events")
    for diff in applied.samples:
        if diff.user_id == user:
            lines.extend(difference_lines(diff)[:3])
    return lines


def _print_lines(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _skipped(count: int) -> str:
    return f", {count:,} of erased children skipped" if count else ""


def summary_line(report: ReplayReport) -> str:
    """The final line: totals, time and rate of the replay, and the raw read rate."""
    done = report.replayed
    partitions = len(report.checkpoints)
    line = (
        f"replay {report.mode} {report.run_id}: {done.records:,} events ({done.applied:,} applied, "
        f"{done.duplicates:,} duplicates, {done.dead_lettered:,} dead letters"
        f"{_skipped(done.erased_skipped)}) from {partitions} "
        f"partitions in {done.seconds:.2f} s: {rate(done.records, done.seconds)}"
    )
    raw = report.raw_read
    if raw is not None:
        line += (
            f"; raw stream read of the same log (no database): {rate(raw.records, raw.seconds)} "
            f"({raw.records:,} events in {raw.seconds:.2f} s)"
        )
    return line + f"; run total {report.seconds:.2f} s"


def print_report(console: Console, report: ReplayReport) -> None:
    """Phases, the comparison (verify) or the swap outcome, and the final line."""
    for phase in report.phases:
        console.print(
            f"  {phase.name:<16} {phase.records:>10,} events in {phase.seconds:7.2f} s  "
            f"{rate(phase.records, phase.seconds)}",
            highlight=False,
        )
    if report.comparison is not None:
        print_comparison(console, report.comparison)
    if report.mode == "swap":
        kept = (
            f"the replaced tables are kept in schema {report.replaced_schema} (a snapshot at "
            f"the swap checkpoints; DROP SCHEMA {report.replaced_schema} CASCADE frees them)"
            if report.replaced_schema
            else "the replaced tables were dropped"
        )
        paused = "" if report.paused_s is None else f" (live writes paused {report.paused_s:.2f} s)"
        console.print(
            f"swap: the rebuilt projections are live at the checkpoints of "
            f"{len(report.checkpoints)} partitions{paused}; {kept}",
            style="bold green",
            highlight=False,
            soft_wrap=True,
        )
    console.print(summary_line(report), highlight=False, soft_wrap=True)


def print_no_history(console: Console, history: History) -> None:
    """Say that the log holds no record of the user, and where it looked."""
    console.print(
        f"{history.user_id}: no events of this user in the log "
        f"({history.records_scanned:,} records read in partitions "
        f"{list(history.partitions_scanned)})",
        highlight=False,
        soft_wrap=True,
    )


def print_history(
    console: Console, history: History, live: Friendship | None, user_ref: str
) -> None:
    """The user's records as a table, then the folded score next to live's.

    ``user_ref`` is the keyed hash the logs name the child by (``Keys.user_ref``), printed so
    an operator can match log lines to this child.
    """
    several = len({line.partition for line in history.lines}) > 1
    table = Table(
        title=f"history of {history.user_id} (user ref {user_ref}; partitions "
        f"{list(history.partitions_scanned)}, {history.records_scanned:,} records read)"
    )
    if several:
        table.add_column("partition", justify="right")
    for column in ("offset", "occurred_at", "type", "detail", "delta", "score", "note"):
        numeric = column in ("offset", "delta", "score")
        table.add_column(column, justify="right" if numeric else "left")
    for line in history.lines:
        cells = [
            str(line.offset),
            format_instant(line.occurred_at) if line.occurred_at else "-",
            line.type,
            line.detail,
            "-" if line.delta is None else f"{line.delta:+d}",
            "-" if line.score is None else str(line.score),
            line.note,
        ]
        table.add_row(*([str(line.partition)] if several else []), *cells)
    console.print(table)
    folded = history.friendship
    text = (
        f"{history.user_id}: score {folded.score} ({level_of(folded.score)}), "
        f"{folded.events_applied} events applied"
    )
    if live is None:
        text += "; live has no friendship row for this user"
    else:
        same = (live.score, live.events_applied) == (folded.score, folded.events_applied)
        text += (
            f"; live: score {live.score}, {live.events_applied} events "
            f"({'matches' if same else 'DIFFERS: run replay --verify'})"
        )
    console.print(text, highlight=False, soft_wrap=True)
