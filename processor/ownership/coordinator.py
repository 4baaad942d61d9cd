"""The membership and balance loop of one processor process.

Every ``LEASE_INTERVAL_S`` the process (a *member*) does one ``tick``:

1. heartbeat on its control connection (``membership``), fence members whose heartbeat is too
   old (their backends are terminated, which frees their leases);
2. give up the partitions whose lease this member lost with a connection (terminated, database
   restarted), at once rather than at their next batch, which may never come;
3. move towards its fair share (``balance.plan_balance``): hand off the surplus when members
   joined, take free partitions when some left.

Taking a partition opens a connection, takes the lease on it (``leases``), starts a new lease
epoch on the checkpoint (the fencing token) and hands the connection to a new
``PartitionOwner`` made by the runtime. Owners leave the registry when they release.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from processor.applying.checkpoint import (
    begin_lease_epoch,
    fold_versions,
    partition_fold_version,
)
from processor.applying.errors import ApplyError
from processor.errors import loggable
from processor.ownership.balance import plan_balance
from processor.ownership.errors import OwnershipError
from processor.ownership.leases import LeaseHolder, current_lease_holders, try_acquire_lease
from processor.ownership.membership import (
    MEMBER_APPLICATION_PREFIX,
    OWNER_APPLICATION_PREFIX,
    fence,
    heartbeat,
    join,
    leave,
    read_membership,
    register_backend,
)
from processor.ownership.owner import PartitionOwner
from processor.settings import Settings
from projections.database import connect

log = logging.getLogger(__name__)

#: Makes the owner of a partition whose lease ``conn`` holds:
#: ``(partition, conn, checkpoint, lease epoch, fold version) -> owner``, or None when this
#: process cannot own it (it does not know the partition's fold version: it stops).
MakeOwner = Callable[[int, psycopg.Connection, int, int, int], PartitionOwner | None]


class Coordinator:
    """Membership, leases and the balance of partitions for one member.

    Args:
        settings: the partition count, database URL, lease interval and member timeout.
        member: this process's member id (``host:pid``).
        make_owner: builds the owner of a partition once its lease is taken.
        on_take: called after each lease taken (the process's metrics).
    """

    def __init__(
        self,
        settings: Settings,
        member: str,
        make_owner: MakeOwner,
        on_take: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.member = member
        self._make_owner = make_owner
        self._on_take = on_take
        self._control: psycopg.Connection | None = None
        self._owners: dict[int, PartitionOwner] = {}
        self._stopped: dict[int, Exception] = {}
        self._lock = threading.Lock()

    # -- registry (called by owners, any thread) -----------------------------------------------

    def owned_partitions(self) -> list[int]:
        """The partitions this member owns now."""
        with self._lock:
            return sorted(self._owners)

    def owners(self) -> list[PartitionOwner]:
        """The owners of the partitions this member owns now, by partition."""
        with self._lock:
            return [self._owners[p] for p in sorted(self._owners)]

    def forget(self, owner: PartitionOwner) -> None:
        """``owner`` released its partition."""
        with self._lock:
            if self._owners.get(owner.partition) is owner:
                del self._owners[owner.partition]

    def stopped(self, owner: PartitionOwner, error: Exception) -> None:
        """``owner`` stopped its partition: this member will not take it again."""
        with self._lock:
            self._stopped[owner.partition] = error

    # -- the loop (one thread) -----------------------------------------------------------------

    def join(self) -> None:
        """Open the control connection and register as a member.

        Raises:
            MemberIdInUse: another live process joined with this member id.
            psycopg.Error: the database cannot be reached.
        """
        control = connect(
            self.settings.database_url,
            application_name=f"{MEMBER_APPLICATION_PREFIX}{self.member}",
        )
        try:
            register_backend(control, self.member)
            join(control, self.member)
        except BaseException:
            control.close()
            raise
        self._control = control
        log.info("member %s joined", self.member)

    def tick(self, stopping: Callable[[], bool]) -> None:
        """One round of the loop (see the module doc); a database failure waits for the next.

        Args:
            stopping: True once the process is shutting down (no partition is taken then).
        """
        try:
            live, holders = self._check_members()
        except (psycopg.Error, OwnershipError) as exc:
            log.warning("membership check failed (%s); retrying", loggable(exc))
            if self._control is not None:
                self._control.close()
            self._control = None
            return
        self._let_lost_leases_go(holders)
        self._let_other_versions_go()
        with self._lock:
            owned = set(self._owners)
            unavailable = set(self._stopped)
        plan = plan_balance(
            self.settings.partitions,
            live,
            self.member,
            owned=owned,
            held_by_others={p for p in holders if p not in owned},
            unavailable=unavailable,
            keep=unavailable & owned,
        )
        for partition in plan.hand_off:
            with self._lock:
                owner = self._owners.get(partition)
            if owner is not None:
                owner.hand_off(f"rebalance: fair share is {plan.share}")
        for partition in plan.take:
            if stopping():
                return
            self._take(partition)

    def leave(self) -> None:
        """Let every owner go and deregister (graceful shutdown).

        Call after the worker pool stopped: a batch that outlived the pool's timeout is
        cancelled and rolls back (``PartitionOwner.abandon``).
        """
        with self._lock:
            owners = list(self._owners.values())
            self._owners.clear()
        for owner in owners:
            owner.abandon()
        control, self._control = self._control, None
        if control is None:
            return
        try:
            leave(control, self.member)
        except psycopg.Error as exc:
            log.warning("could not deregister member %s: %s", self.member, loggable(exc))
        control.close()

    # -- steps -----------------------------------------------------------------------------------

    def _check_members(self) -> tuple[tuple[str, ...], dict[int, LeaseHolder]]:
        """Heartbeat, fence the stale members; the live members and the lease holders."""
        if self._control is None or self._control.closed:
            self.join()
        control = self._control
        assert control is not None
        heartbeat(control, self.member)
        view = read_membership(control, self.settings.member_timeout_s)
        for stale in view.stale:
            if stale != self.member:
                terminated = fence(control, stale)
                log.warning(
                    "member %s missed its heartbeats for %.1f s: fenced (%d connections "
                    "terminated); its partitions will be taken over",
                    stale,
                    self.settings.member_timeout_s,
                    terminated,
                )
        return view.live, current_lease_holders(control)

    def _let_other_versions_go(self) -> None:
        """Hand off the partitions whose projections moved to another fold version (a rebuild
        with a new rule was swapped in): their next batch would be fenced, but an idle one may
        wait long for it. The next owner folds with the version it finds."""
        control = self._control
        if control is None:
            return
        try:
            versions = fold_versions(control)
        except psycopg.Error as exc:
            log.warning("reading the fold versions failed (%s); retrying", loggable(exc))
            return
        with self._lock:
            owners = dict(self._owners)
        for partition, owner in owners.items():
            live = versions.get(partition)
            if live is not None and live != owner.applier.rules.version:
                owner.hand_off(f"the projections are at fold version {live} now", logging.INFO)

    def _let_lost_leases_go(self, holders: dict[int, LeaseHolder]) -> None:
        """Hand off the partitions whose lease is no longer this member's.

        A lease lives on its connection: one this member no longer holds was lost with that
        connection (terminated, database restarted). Giving the partition up now, not at its
        next batch (which may never come on an idle partition), lets it be owned again.
        """
        with self._lock:
            owners = dict(self._owners)
        for partition, owner in owners.items():
            holder = holders.get(partition)
            if holder is None or holder.owner != self.member:
                owner.hand_off(
                    "its lease was lost with its database connection", logging.WARNING, lost=True
                )

    def _take(self, partition: int) -> None:
        """Try to take a free partition's lease and start its owner."""
        try:
            conn = connect(
                self.settings.database_url,
                application_name=f"{OWNER_APPLICATION_PREFIX}{self.member}",
            )
        except psycopg.OperationalError as exc:
            log.warning("cannot connect to the database: %s", loggable(exc))
            return
        try:
            register_backend(conn, self.member)
            if not try_acquire_lease(conn, partition):
                conn.close()
                return
            checkpoint, epoch = begin_lease_epoch(conn, partition, self.member)
            fold_version = partition_fold_version(conn, partition)
        except (psycopg.Error, ApplyError) as exc:
            log.warning("partition %d: taking the lease failed: %s", partition, loggable(exc))
            conn.close()
            return
        owner = self._make_owner(partition, conn, checkpoint, epoch, fold_version)
        if owner is None:
            conn.close()
            return
        with self._lock:
            self._owners[partition] = owner
        owner.start()  # registered first: an owner that releases at once is forgotten
        if self._on_take is not None:
            self._on_take()
        log.info(
            "partition %d: lease taken (epoch %d), resuming after offset %d",
            partition,
            epoch,
            checkpoint,
        )
