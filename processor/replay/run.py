"""A replay run: rebuild into a shadow schema, catch up with live, then verify or swap.

Phases (each a progress bar):

1. *prepare*: read the live checkpoints ``L0`` and the stream tails; refuse a truncated log
   (``LogTruncated``); create the shadow schema ``replay_<id>``.
2. *raw read* (optional): read offsets ``0..L0`` of every partition without the database, to
   report the raw stream read rate of the same records next to the replay rate.
3. *rebuild*: read ``0..L0`` and apply it to the shadow with ``apply_batch`` in large batches.
4. *catch-up*: while live moved on by more than ``final_gap`` offsets, apply up to its current
   checkpoints (live keeps running; nothing waits for replay).
5. *final*, in ONE transaction on the shadow connection:
   - verify: ``REPEATABLE READ``. Its first statement reads the live checkpoints ``L``, fixing a
     snapshot where live is exactly at ``L`` (every live batch commits checkpoint and effects
     together). The remaining records up to ``L`` are applied to the shadow in the same
     transaction, which sees its own writes, and the comparison runs there. Live never pauses.
   - swap: the live checkpoint rows are locked ``FOR UPDATE`` (live owners' next batch waits on
     that lock: the fence). The remaining records up to those checkpoints are applied to the
     shadow, the shadow's checkpoints must equal live's, and the tables are swapped
     (``shadow.swap_tables``). After COMMIT the waiting owners go on from the same checkpoints,
     so nothing is skipped or applied twice. Live writes pause for this step only.
6. the shadow schema is dropped (after a swap it holds only its checkpoint rows).

Nothing here reads the wall clock: durations come from the monotonic clock, and what is written
depends on the log only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType

import psycopg

from processor import tuning
from processor.applying.applier import PartitionApplier
from processor.applying.checkpoint import (
    announce,
    fold_versions,
    read_checkpoints,
    set_fold_version,
)
from processor.applying.postgres import PostgresStore
from processor.errors import loggable
from processor.privacy.erasure import purge_erased
from processor.privacy.key_ids import check_keys
from processor.privacy.keys import load_keys
from processor.reading.log_record import LogRecord
from processor.reading.log_start import ensure_log_complete
from processor.reading.probes import read_tail_offsets
from processor.reading.ranges import (
    LogRange,
    ranges_between,
    read_log_ranges,
    read_log_ranges_into_memory,
)
from processor.replay.applier import ShadowApplier
from processor.replay.compare import Comparison, compare_projections
from processor.replay.errors import (
    FoldVersionNotKnown,
    LiveMovedBackwards,
    ReplayError,
    SchemaDrift,
    SwapRefused,
)
from processor.replay.options import ReplayOptions, ReplayReport
from processor.replay.progress import ReplayProgress
from processor.replay.shadow import (
    analyze,
    connect_shadow,
    create_shadow,
    drop_schema,
    ensure_migrated,
    live_schema,
    new_run_id,
    replaced_schema,
    replay_schemas,
    schema_differences,
    shadow_schema,
    swap_tables,
)
from processor.settings import Settings
from projections import advisory_locks
from projections.database import connect
from projections.fold import FoldRules
from projections.rules import load_rule_versions
from projections.tables import REPLACED_SUFFIX

log = logging.getLogger(__name__)


#: A check of the rebuilt shadow before it is swapped in: ``(settings, shadow schema, its
#: checkpoints, the rule it was built with)``; it raises to refuse the swap.
ShadowCheck = Callable[[Settings, str, Mapping[int, int], FoldRules], None]
#: Statements to commit with the swap itself (a cursor in its transaction).
InSwap = Callable[[psycopg.Cursor], None]


class _Run:
    """One replay's shadow schema, its checkpoints and the steps on it (see the module doc)."""

    def __init__(self, settings: Settings, options: ReplayOptions, progress: ReplayProgress):
        self.settings = settings
        self.options = options
        self.progress = progress
        self.keys = load_keys(settings)
        self.run_id = new_run_id()
        self.shadow = shadow_schema(self.run_id)
        self.owner = f"replay {self.run_id}"
        self.conn = connect(
            settings.database_url, application_name=f"friendship-stream {self.owner}"
        )
        self.live = live_schema(self.conn)
        self.checkpoints: dict[int, int] = {}
        self.report = ReplayReport(self.run_id, "", self.live)
        self.rules: FoldRules = options.rules or load_rule_versions(settings.fold_rules).current
        self._created = False

    def __enter__(self) -> _Run:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        try:
            if self._created:
                drop_schema(self.settings.database_url, self.shadow)
        finally:
            self.conn.close()

    # -- steps -----------------------------------------------------------------------------------

    def prepare(self) -> dict[int, int]:
        """Live checkpoints ``L0``, log completeness, the shadow schema; returns ``L0``."""
        ensure_migrated(self.conn)
        check_keys(self.conn, self.keys)
        leftovers = [s for s in replay_schemas(self.conn) if not s.endswith(REPLACED_SUFFIX)]
        if leftovers:
            log.warning(
                "replay schemas exist already (another replay is running, or a killed one left "
                "them; DROP SCHEMA <name> CASCADE frees them): %s",
                ", ".join(leftovers),
            )
        live0 = read_checkpoints(self.conn, self.live)
        partitions = sorted(set(range(self.settings.partitions)) | set(live0))
        tails = asyncio.run(read_tail_offsets(self.settings, partitions))
        ensure_log_complete(self.settings, live0, tails)
        create_shadow(
            self.settings.database_url,
            self.shadow,
            len(partitions),
            self.live,
            self.rules.version,
        )
        self._created = True
        self.checkpoints = dict.fromkeys(partitions, -1)
        log.info("replay %s: shadow schema %s, live schema %s", self.run_id, self.shadow, self.live)
        return {p: live0.get(p, -1) for p in partitions}

    def check_schema(self, *, strict: bool) -> None:
        """Compare live's table definitions with the shadow's (``projections.tables``).

        Raises:
            SchemaDrift: they differ and ``strict`` (a swap would lose what only live has).
        """
        differences = schema_differences(self.conn, self.live, self.shadow)
        if not differences:
            return
        listed = "; ".join(differences[:10])
        if strict:
            raise SchemaDrift(
                f"the live tables differ from projections/tables.py, refusing to swap: {listed}"
            )
        log.warning("live tables differ from projections/tables.py: %s", listed)

    def raw_read(self, ranges: Sequence[LogRange]) -> None:
        """Read ``ranges`` without the database: the raw stream read rate of the same records."""
        bar = self.progress.phase("read only (no db)", sum(r.span for r in ranges))

        def count(_partition: int, batch: list[LogRecord]) -> None:
            bar.advance(len(batch))

        read_log_ranges(
            self.settings,
            ranges,
            count,
            batch_size=self.options.batch_size,
            credit=self.options.credit,
        )
        self.report.raw_read = bar.finish()

    def apply(self, ranges: Sequence[LogRange], name: str) -> None:
        """Read ``ranges`` and apply them to the shadow with the worker threads."""
        if not ranges:
            return
        bar = self.progress.phase(name, sum(r.span for r in ranges))
        options = self.options
        with ShadowApplier(
            self.settings.database_url,
            self.shadow,
            self.live,
            self.checkpoints,
            self.keys,
            threads=options.threads,
            owner=self.owner,
            on_applied=lambda r, n: bar.advance(n, r),
            max_pending_records=options.batch_size * max(4, 2 * options.threads),
            rules=self.rules,
        ) as applier:
            read_log_ranges(
                self.settings,
                ranges,
                applier.deliver,
                batch_size=options.batch_size,
                credit=options.credit,
                check=applier.check,
            )
            applier.drain()
        self.report.phases.append(bar.finish())

    def rebuild(self, live0: Mapping[int, int]) -> None:
        """Raw read (optional), rebuild up to ``live0``, then catch up while live moves on."""
        ranges = ranges_between(self.checkpoints, live0)
        if self.options.measure_read:
            self.raw_read(ranges)
        self.apply(ranges, "rebuild")
        for round_number in range(1, self.options.catch_up_rounds + 1):
            live = read_checkpoints(self.conn, self.live)
            self._check_not_behind(live)
            ranges = ranges_between(self.checkpoints, live)
            if sum(r.span for r in ranges) <= self.options.final_gap:
                return
            self.apply(ranges, f"catch-up {round_number}")

    def final_apply(self, conn: psycopg.Connection, live: Mapping[int, int]) -> None:
        """Apply the records up to ``live`` to the shadow inside ``conn``'s transaction, then
        check that the shadow's checkpoints equal ``live``.

        Raises:
            ReplayError: the shadow's checkpoints differ from ``live`` afterwards (a bug).
        """
        self._check_not_behind(live)
        ranges = ranges_between(self.checkpoints, live)
        if ranges:
            bar = self.progress.phase("final catch-up", sum(r.span for r in ranges))
            records = read_log_ranges_into_memory(self.settings, ranges, credit=self.options.credit)
            size = self.options.batch_size
            store = PostgresStore(conn)
            for partition, partition_records in sorted(records.items()):
                # One attempt: this runs inside the final transaction (a snapshot, or live writes
                # paused behind the checkpoint locks), where waiting and retrying cannot help.
                checkpoint = self.checkpoints[partition]
                applier = PartitionApplier(
                    partition, checkpoint, self.owner, self.keys, attempts=1, rules=self.rules
                )
                for start in range(0, len(partition_records), size):
                    batch = partition_records[start : start + size]
                    result = applier.apply(store, batch)
                    self.checkpoints[partition] = applier.checkpoint
                    bar.advance(len(batch), result)
            self.report.phases.append(bar.finish())
        reached = read_checkpoints(conn, self.shadow)
        wrong = {p: (reached.get(p), o) for p, o in live.items() if reached.get(p) != o}
        if wrong:
            raise ReplayError(
                "the rebuild did not end at the live checkpoints "
                f"(partition: (rebuild, live)): {wrong}"
            )

    def _check_not_behind(self, live: Mapping[int, int]) -> None:
        behind = {
            p: (o, self.checkpoints.get(p, -1))
            for p, o in live.items()
            if o < self.checkpoints.get(p, -1)
        }
        if behind:
            raise LiveMovedBackwards(
                "live checkpoints went back below what replay already applied "
                f"(partition: (live, replay)): {behind}; was a checkpoint reset?"
            )

    def _purge_erased(self, conn: psycopg.Connection) -> None:
        """Inside the final transaction: forget in the shadow the children erased while it was
        built (``privacy.erasure.purge_erased``)."""
        with conn.cursor() as cur:
            purged = purge_erased(cur, self.shadow, self.keys)
        if purged:
            log.info("replay %s: %d erased children removed from the rebuild", self.run_id, purged)

    def compare_at_live(self) -> Comparison:
        """The final verify step: one repeatable-read snapshot of live, the shadow brought to
        the same checkpoints inside it, and the comparison."""
        conn = connect_shadow(self.settings.database_url, self.shadow, self.live)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            with conn.transaction():
                live = read_checkpoints(conn, self.live)  # the snapshot starts here
                self.final_apply(conn, live)
                self._purge_erased(conn)
                self.report.checkpoints = live
                return compare_projections(conn, self.live, self.shadow, live)
        finally:
            conn.close()

    def swap_in(self, in_swap: InSwap | None = None) -> None:
        """The final swap step, retried when a reader holds a table too long; ``in_swap`` runs
        inside its transaction, after the swap."""
        analyze(self.settings.database_url, self.shadow)
        conn = connect_shadow(self.settings.database_url, self.shadow, self.live)
        conn.execute("SET synchronous_commit TO on")
        replaced = replaced_schema(self.run_id)
        try:
            for attempt in range(1, self.options.swap_attempts + 1):
                before = dict(self.checkpoints)
                locked_at = time.monotonic()
                try:
                    with conn.transaction():
                        timeout_ms = int(self.options.checkpoint_lock_timeout_s * 1000)
                        conn.execute(f"SET LOCAL lock_timeout = '{timeout_ms}ms'")
                        live = read_checkpoints(conn, self.live, lock_mode="FOR UPDATE")
                        self.final_apply(conn, live)
                        self._purge_erased(conn)
                        drift = schema_differences(conn, self.live, self.shadow)
                        if drift:
                            raise SchemaDrift("; ".join(drift[:10]))
                        swap_tables(
                            conn, self.live, self.shadow, replaced, self.options.lock_timeout_s
                        )
                        with conn.cursor() as cur:  # the rows are locked: batches of the old
                            set_fold_version(cur, self.live, self.rules.version)  # rule stop
                            announce(cur, "swap")  # read-your-writes waiters re-check
                            if in_swap is not None:
                                in_swap(cur)
                    self.report.paused_s = time.monotonic() - locked_at
                    self.report.checkpoints = live
                    self.report.replaced_schema = replaced
                    return
                except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
                    self.checkpoints = before
                    if attempt == self.options.swap_attempts:
                        raise SwapRefused(
                            f"could not lock the live tables in {attempt} attempts "
                            f"({loggable(exc)}); "
                            "nothing changed, try again when readers are quieter"
                        ) from exc
                    log.warning(
                        "swap attempt %d could not take its locks (%s); retrying",
                        attempt,
                        loggable(exc),
                    )
                    time.sleep(tuning.SWAP_RETRY_WAIT_S * attempt)
        finally:
            conn.close()

    def take_swap_lock(self) -> None:
        """One swap at a time per database (a session advisory lock on the run's connection)."""
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", advisory_locks.REPLAY_SWAP
        ).fetchone()
        if not (row and row[0]):
            raise SwapRefused("another replay --swap is running on this database")


def live_fold_rules(settings: Settings) -> FoldRules:
    """The rule of the fold version the live projections are at (the code's current one for a
    deployment with no checkpoints yet).

    Raises:
        FoldVersionNotKnown: live is at a version the code's rules (``FOLD_RULES``) do not
            hold, or its partitions disagree.
    """
    known = load_rule_versions(settings.fold_rules)
    with connect(settings.database_url) as conn:
        versions = set(fold_versions(conn).values()) or {known.current.version}
    rules = [known.get(v) for v in sorted(versions)]
    if len(rules) != 1 or rules[0] is None:
        raise FoldVersionNotKnown(
            f"the live projections are at fold version {', '.join(map(str, sorted(versions)))}; "
            f"this code knows {known.describe()} (FOLD_RULES)"
        )
    return rules[0]


def _live_rules(settings: Settings, options: ReplayOptions) -> ReplayOptions:
    """``options`` with the rule of live's fold version when none is given (a verify compares
    like with like)."""
    if options.rules is not None:
        return options
    return replace(options, rules=live_fold_rules(settings))


def verify(settings: Settings, options: ReplayOptions, progress: ReplayProgress) -> ReplayReport:
    """Rebuild into a shadow schema and compare it with live at the same checkpoints, with the
    rule of live's fold version unless ``options.rules`` names one.

    Returns:
        The report; ``report.comparison.identical`` tells the outcome.

    Raises:
        LogTruncated: the log is truncated. ReplayError: another replay failure.
        FoldVersionNotKnown: live is at a fold version the code's rules do not hold.
        psycopg.Error, OSError: the database or broker failed; the shadow schema is dropped.
    """
    started = time.monotonic()
    with _Run(settings, _live_rules(settings, options), progress) as run:
        run.report.mode = "verify"
        live0 = run.prepare()
        run.check_schema(strict=False)
        run.rebuild(live0)
        run.report.comparison = run.compare_at_live()
    run.report.seconds = time.monotonic() - started
    return run.report


def swap(
    settings: Settings,
    options: ReplayOptions,
    progress: ReplayProgress,
    check: ShadowCheck | None = None,
    in_swap: InSwap | None = None,
) -> ReplayReport:
    """Rebuild into a shadow schema, catch up with live and swap it in (see the module doc).
    The live checkpoints then carry the rebuild's fold version (``options.rules``, or the
    current one of ``FOLD_RULES``): batches folding with another version are fenced.

    Args:
        settings: the deployment.
        options: how to run.
        progress: where the bars go.
        check: run on the rebuilt shadow after the catch-up, before the swap (a new fold
            version is checked against the pure fold of the log, ``processor.versions``).
        in_swap: run inside the swap's transaction (a build records that it is live, so the
            record and the swap commit together).

    Raises:
        LogTruncated, SchemaDrift, SwapRefused, ReplayError: nothing was changed.
        Whatever ``check`` raises: nothing was changed.
        psycopg.Error, OSError: the database or broker failed; nothing was changed.
    """
    started = time.monotonic()
    with _Run(settings, options, progress) as run:
        run.report.mode = "swap"
        run.take_swap_lock()
        live0 = run.prepare()
        run.check_schema(strict=True)
        run.rebuild(live0)
        if check is not None:
            check(settings, run.shadow, dict(run.checkpoints), run.rules)
        run.swap_in(in_swap)
    if options.drop_replaced and run.report.replaced_schema is not None:
        drop_schema(settings.database_url, run.report.replaced_schema)
        run.report.replaced_schema = None
    run.report.seconds = time.monotonic() - started
    return run.report
