"""A processor's background build of a new fold version (see ``processor.versions``).

``ProjectionBuilder`` runs ``replay --swap`` with the new rule in a thread of the processor
that found live at the version before its current one, while its owners keep live current with
the old rule. One build runs per deployment: the swap lock (``advisory_locks.REPLAY_SWAP``)
refuses a second, which waits and looks again. Its state and progress go to
``projection_builds`` every ``tuning.BUILD_PROGRESS_EVERY_S``.

The build runs with the processor's database credentials: it creates a schema, tables and
swaps them, so it needs the deployment owner's rights. A processor running as the
least-privilege role (``just principals``) cannot; the build then fails with that reason, and
``just replay --swap`` (run as the owner) does the same job.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Mapping

import psycopg
from rich.console import Console

from processor import tuning
from processor.errors import ProcessorError, loggable
from processor.replay.errors import SwapRefused
from processor.replay.options import ReplayOptions
from processor.replay.progress import ReplayProgress
from processor.replay.run import swap
from processor.settings import Settings
from processor.versions.builds import live_fold_version, start_build, update_build
from processor.versions.errors import BuildCheckFailed
from processor.versions.sample import check_against_pure_fold
from projections.database import connect
from projections.fold import FoldRules

log = logging.getLogger(__name__)


class ProjectionBuilder:
    """Builds ``rules`` in a shadow from the log, checks it and swaps it in, in a thread.

    Args:
        settings: the deployment (its database credentials must own the tables).
        rules: the new fold version.
        member: who builds (``host:pid``), recorded with the build.
        stopping: set when the processor stops: no new attempt starts (one in flight ends with
            the process, leaving its shadow schema, as a killed replay does).
    """

    def __init__(
        self, settings: Settings, rules: FoldRules, member: str, stopping: threading.Event
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.member = member
        self._stopping = stopping
        self._thread = threading.Thread(
            target=self._run, name=f"build fold version {rules.version}", daemon=True
        )
        #: True once the new version is live (this builder's swap or another's).
        self.done = False

    def start(self) -> None:
        """Start building in the background."""
        self._thread.start()

    def _run(self) -> None:
        version = self.rules.version
        while not self._stopping.is_set():
            try:
                with connect(self.settings.database_url) as conn:
                    if live_fold_version(conn, version) >= version:
                        self.done = True
                        return
                self._build_once()
                self.done = True
                return
            except SwapRefused as exc:
                log.info("fold version %d: not building now (%s)", version, exc)
            except BuildCheckFailed as exc:
                log.error("fold version %d: the build failed its check: %s", version, exc)
                return  # the rule or the fold is wrong: building again gives the same answer
            except (ProcessorError, psycopg.Error, OSError) as exc:
                log.error("fold version %d: the build failed (%s)", version, loggable(exc))
            self._stopping.wait(tuning.BUILD_RETRY_S)

    def _build_once(self) -> None:
        settings, version = self.settings, self.rules.version
        with connect(settings.database_url) as conn:
            conn.execute(
                "UPDATE projection_builds SET state = 'failed', finished_at = now(), "
                "message = 'abandoned: its process stopped' "
                "WHERE state IN ('building', 'checking', 'swapping')"
            )
            build_id = start_build(conn, version, self.member)
            log.info("fold version %d: building it from the log beside live", version)
            progress = ReplayProgress(Console(file=io.StringIO()))
            reporting = threading.Event()
            reporter = threading.Thread(
                target=self._report, args=(conn, build_id, progress, reporting), daemon=True
            )

            def check(
                s: Settings, shadow: str, checkpoints: Mapping[int, int], rules: FoldRules
            ) -> None:
                update_build(conn, build_id, "checking")
                check_against_pure_fold(s, shadow, checkpoints, rules)
                update_build(conn, build_id, "swapping", message="checked against the pure fold")

            def went_live(cur: psycopg.Cursor) -> None:  # commits with the swap
                cur.execute(
                    "UPDATE projection_builds SET state = 'live', updated_at = now(), "
                    "finished_at = now(), message = 'swapped in' WHERE id = %s",
                    (build_id,),
                )

            reporter.start()
            try:
                with progress:
                    options = ReplayOptions(
                        rules=self.rules, measure_read=False, drop_replaced=True
                    )
                    report = swap(settings, options, progress, check=check, in_swap=went_live)
            except BaseException as exc:
                reporting.set()
                reporter.join()
                update_build(conn, build_id, "failed", message=loggable(exc))
                raise
            reporting.set()
            reporter.join()
            done = sum(phase.records for phase in progress.phases)
            paused = report.paused_s or 0.0
            update_build(
                conn,
                build_id,
                None,
                done=done,
                message=f"swapped in; live writes paused {paused:.3f} s",
            )
        log.info(
            "fold version %d is live: %d records rebuilt in %.1f s, live writes paused %.3f s",
            version,
            done,
            report.seconds,
            paused,
        )

    def _report(
        self,
        conn: psycopg.Connection,
        build_id: int,
        progress: ReplayProgress,
        finished: threading.Event,
    ) -> None:
        """Record the build's progress (not its state, which the build moves) until
        ``finished`` (psycopg serialises the two threads' statements on ``conn``)."""
        while not finished.wait(tuning.BUILD_PROGRESS_EVERY_S):
            phases = list(progress.phases)
            done = sum(phase.records for phase in phases)
            total = sum(phase.total for phase in phases)
            try:
                update_build(conn, build_id, None, done=done, total=max(total, done))
            except psycopg.Error as exc:
                log.warning("fold version build: progress not recorded (%s)", loggable(exc))
