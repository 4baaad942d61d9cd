"""Which fold version live serves, what a processor does about it, and the builds' records.

``plan`` reads live's fold version and decides, for the fold versions this code knows, which
rule the owners fold with and which version (if any) to build. ``projection_builds`` keeps each
build's state and progress (records done of the records to go through) for ``just status`` and
``GET /v1/stats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg

from processor.applying.checkpoint import fold_versions
from processor.versions.errors import FoldVersionUnknown
from projections.fold import FoldRules
from projections.rules import RuleVersions

#: States of a build, in order; ``failed`` ends one too.
ACTIVE_STATES: Final = ("building", "checking", "swapping")


@dataclass(frozen=True)
class VersionPlan:
    """What a processor does about fold versions.

    Attributes:
        live_version: the fold version the live tables hold.
        serve: the rule the owners fold with (live's).
        build: the rule to build in a shadow and swap in, None when live is current.
    """

    live_version: int
    serve: FoldRules
    build: FoldRules | None


def live_fold_version(conn: psycopg.Connection, default: int) -> int:
    """The fold version of the live checkpoints (``default`` when there are none).

    Raises:
        FoldVersionUnknown: the partitions disagree (a swap records one version on all of them
            in one transaction, so this is a database edited by hand).
    """
    versions = set(fold_versions(conn).values())
    if len(versions) > 1:
        raise FoldVersionUnknown(
            f"the live checkpoints disagree on the fold version ({sorted(versions)}): a swap "
            "records one version on every partition; run `just replay --swap` to rebuild"
        )
    return versions.pop() if versions else default


def plan(live_version: int, known: RuleVersions) -> VersionPlan:
    """Decide, for live at ``live_version``, what a processor with ``known`` does.

    Raises:
        FoldVersionUnknown: live is newer than ``known.current`` (deploy the newer processor),
            or older than the version before it (nothing here can keep live current meanwhile:
            run ``just replay --swap`` with this code first).
    """
    current = known.current
    if live_version == current.version:
        return VersionPlan(live_version, current, None)
    serving = known.get(live_version)
    if live_version > current.version or serving is None:
        hint = (
            "deploy a processor that knows it"
            if live_version > current.version
            else "rebuild with `just replay --swap` first"
        )
        raise FoldVersionUnknown(
            f"the live projections are at fold version {live_version}; this processor knows "
            f"{known.describe()}: {hint}"
        )
    return VersionPlan(live_version, serving, current)


@dataclass(frozen=True)
class BuildStatus:
    """One build of a fold version, as ``projection_builds`` holds it.

    Attributes:
        fold_version: the version being built.
        state: ``building``, ``checking``, ``swapping``, ``live`` (swapped in) or ``failed``.
        member: the processor (``host:pid``) or replay that runs it.
        started_at, updated_at, finished_at: database times (UTC).
        records_done: log records applied to the shadow so far.
        records_total: log records to go through (an upper bound: offsets may have holes;
            it grows while live moves on).
        message: why it failed, or what it checked.
    """

    fold_version: int
    state: str
    member: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    records_done: int
    records_total: int
    message: str

    @property
    def active(self) -> bool:
        """The build is still running."""
        return self.state in ACTIVE_STATES


_COLUMNS: Final = (
    "fold_version, state, member, started_at, updated_at, finished_at, records_done, "
    "records_total, message"
)


def start_build(conn: psycopg.Connection, version: int, member: str) -> int:
    """Record a build of ``version`` by ``member``; returns its id."""
    row = conn.execute(
        "INSERT INTO projection_builds (fold_version, state, member) VALUES (%s, 'building', %s) "
        "RETURNING id",
        (version, member),
    ).fetchone()
    assert row is not None  # INSERT ... RETURNING returns its row
    return int(row[0])


def update_build(
    conn: psycopg.Connection,
    build_id: int,
    state: str | None,
    *,
    done: int | None = None,
    total: int | None = None,
    message: str | None = None,
) -> None:
    """Move a build to ``state`` (None: keep it) and record its progress; a final state
    records when it ended."""
    conn.execute(
        "UPDATE projection_builds SET state = coalesce(%s, state), updated_at = now(), "
        "records_done = coalesce(%s, records_done), records_total = coalesce(%s, records_total), "
        "message = coalesce(%s, message), "
        "finished_at = CASE WHEN %s IN ('live', 'failed') THEN now() ELSE finished_at END "
        "WHERE id = %s",
        (state, done, total, message, state, build_id),
    )


@dataclass(frozen=True)
class VersionStatus:
    """What ``just status`` and ``GET /v1/stats`` say of fold versions.

    Attributes:
        serving: the fold version the live tables are at (None before any checkpoint, or when
            the partitions disagree).
        build: the newest build of a fold version, running or ended (None: never one).
    """

    serving: int | None
    build: BuildStatus | None

    def describe(self) -> str:
        """One or two lines for people (``just status``)."""
        line = f"fold version served: {self.serving if self.serving is not None else '-'}"
        build = self.build
        if build is None:
            return line
        share = (
            f" {100 * build.records_done // build.records_total}% "
            f"({build.records_done:,} of {build.records_total:,} records)"
            if build.records_total
            else ""
        )
        note = f": {build.message}" if build.message else ""
        return (
            f"{line}\nbuild of fold version {build.fold_version} by {build.member}: "
            f"{build.state}{share}, started {build.started_at:%Y-%m-%d %H:%M:%S %Z}{note}"
        )


def read_version_status(conn: psycopg.Connection) -> VersionStatus:
    """The fold version live serves and the newest build."""
    versions = set(fold_versions(conn).values())
    serving = versions.pop() if len(versions) == 1 else None
    return VersionStatus(serving, latest_build(conn))


def latest_build(conn: psycopg.Connection) -> BuildStatus | None:
    """The newest build, running or ended (None when there was none)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM projection_builds ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return BuildStatus(
        fold_version=int(row[0]),
        state=str(row[1]),
        member=str(row[2]),
        started_at=row[3],
        updated_at=row[4],
        finished_at=row[5],
        records_done=int(row[6]),
        records_total=int(row[7]),
        message=str(row[8]),
    )
