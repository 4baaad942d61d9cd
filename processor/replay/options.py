"""What a replay is asked to do (``ReplayOptions``) and what it did (``ReplayReport``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from processor import tuning
from processor.replay.compare import Comparison
from processor.replay.progress import Phase
from projections.fold import FoldRules


@dataclass(frozen=True)
class ReplayOptions:
    """How a replay runs.

    Attributes:
        batch_size: records per shadow transaction.
        threads: worker threads applying batches (partitions in parallel).
        credit: chunks in flight per stream subscription.
        measure_read: also read the log without the database, to report the raw read rate.
        drop_replaced: after a swap, drop the replaced tables instead of keeping them.
        catch_up_rounds: most catch-up rounds before the final step.
        final_gap: offsets the final step may still have to apply (under the snapshot or, for
            a swap, while live writes wait); more than this triggers another catch-up round.
        lock_timeout_s: longest wait, in seconds, for the swap's table locks (readers).
        checkpoint_lock_timeout_s: longest wait for the live checkpoint rows (batches in flight).
        swap_attempts: tries of the final swap step when its locks time out.
        rules: the fold version to rebuild with; None: for a verify, the version live is at
            (like is compared with like), for a swap the current version of the code's rules
            (``FOLD_RULES``; the swap makes it live's version).
    """

    batch_size: int = tuning.REPLAY_BATCH_SIZE
    threads: int = tuning.REPLAY_THREADS
    credit: int = tuning.REPLAY_CREDIT
    measure_read: bool = True
    drop_replaced: bool = False
    catch_up_rounds: int = tuning.REPLAY_CATCH_UP_ROUNDS
    final_gap: int = tuning.REPLAY_FINAL_GAP
    lock_timeout_s: float = tuning.SWAP_TABLE_LOCK_TIMEOUT_S
    checkpoint_lock_timeout_s: float = tuning.SWAP_CHECKPOINT_LOCK_TIMEOUT_S
    swap_attempts: int = tuning.SWAP_ATTEMPTS
    rules: FoldRules | None = None


@dataclass
class ReplayReport:
    """What a run did: its schemas, where it ended, each phase's counters, and the outcome."""

    run_id: str
    mode: str
    live_schema: str
    checkpoints: dict[int, int] = field(default_factory=dict)
    raw_read: Phase | None = None
    phases: list[Phase] = field(default_factory=list)
    comparison: Comparison | None = None
    replaced_schema: str | None = None
    seconds: float = 0.0
    #: Seconds the swap held the live checkpoint rows (live writes paused), None without a swap.
    paused_s: float | None = None

    @property
    def replayed(self) -> Phase:
        """All replay phases added up (records, applied, duplicates, dead letters, erased
        children's records skipped, seconds)."""
        total = Phase("replay")
        for phase in self.phases:
            total.records += phase.records
            total.applied += phase.applied
            total.duplicates += phase.duplicates
            total.dead_lettered += phase.dead_lettered
            total.erased_skipped += phase.erased_skipped
            total.seconds += phase.seconds
        return total
