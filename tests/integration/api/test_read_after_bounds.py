"""Read-your-writes against the real database: a read's wait ends at its deadline even when the
database blocks its queries, and NOTIFY (not the safety re-check) is what wakes a waiting read.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from litestar.testing import TestClient

from processor.api import create_app
from processor.api.waiting import WaitRoom
from processor.applying.checkpoint import announce
from processor.settings import Settings
from projections.database import connect
from projections.write_tokens import WantedEvents, done_events
from testkit.services import make_token
from tests.integration.api.test_api import adjusted, assert_error, encode

pytestmark = pytest.mark.integration

#: Generous bound, in seconds, on anything the tests wait for (never a timing assertion).
BOUND_S = 30.0


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(settings)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {make_token(settings, 'admin')}"
        yield test_client


@pytest.mark.parametrize("by", ["event-id", "token"])
def test_a_read_whose_queries_are_blocked_answers_not_yet_applied_at_its_deadline(
    settings: Settings, client: TestClient[Any], by: str
) -> None:
    if by == "token":
        posted = client.post(
            "/v1/events", content=encode(adjusted("kid-lock", 1, "2024-03-01T00:00:00Z"))
        )
        after, table = posted.json()["token"], "write_tokens"
    else:
        after, table = str(uuid.uuid4()), "erasures"
    with connect(settings.database_url) as locker, ThreadPoolExecutor(1) as pool:
        # The lock is held until the answer came (or BOUND_S passed): the read's token lookup
        # or first check cannot run meanwhile.
        locker.execute("BEGIN")
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        answer = pool.submit(
            client.get, "/v1/users/kid-lock/friendship", params={"after": after, "wait_s": 1}
        )
        try:
            response = answer.result(timeout=BOUND_S)
            # Answered while the lock was still held: the transaction is still open.
            assert locker.info.transaction_status.name == "INTRANS"
        finally:
            locker.execute("ROLLBACK")
    assert_error(response, 503, "not_yet_applied")
    assert response.headers["retry-after"] == "1"


def _room(settings: Settings, checks: list[int]) -> WaitRoom:
    """A room whose checks append how many events they found done to ``checks``."""

    async def check(
        wanted: WantedEvents, reader_digest: bytes | None, bound_s: float | None
    ) -> set[str]:
        def run() -> set[str]:
            with connect(settings.database_url) as conn:
                return done_events(conn, wanted, reader_digest)

        done = await asyncio.to_thread(run)
        checks.append(len(done))
        return done

    # The safety re-check never comes within the test: only a notification wakes the wait.
    return WaitRoom(settings.database_url, check, safety_poll_s=3600)


def _apply(settings: Settings, event_id: str, *, notify: bool) -> None:
    """Record ``event_id`` as applied as a batch does, announcing it in the same transaction
    when ``notify``."""
    with connect(settings.database_url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "INSERT INTO applied_events (event_id, partition, log_offset, user_id, type, "
            "occurred_at, encrypted) VALUES (%s, 0, 0, 'kid-notify', 'friendship.adjusted', "
            "now(), false)",
            (event_id,),
        )
        if notify:
            announce(cur, "0:0")


async def _wait_after_apply(settings: Settings, *, notify: bool, wait_s: float) -> int:
    checks: list[int] = []
    room = _room(settings, checks)
    room.start()
    try:
        deadline = asyncio.get_running_loop().time() + BOUND_S
        while not room.listening:
            assert asyncio.get_running_loop().time() < deadline, "the listener within 30 s"
            await asyncio.sleep(0.05)
        event_id = str(uuid.uuid4())
        waiting = asyncio.create_task(room.wait(WantedEvents((event_id,), (None,)), None, wait_s))
        while room.waiting == 0 or not checks:  # registered and past its first check
            assert asyncio.get_running_loop().time() < deadline, "the first check within 30 s"
            await asyncio.sleep(0.01)
        await asyncio.to_thread(_apply, settings, event_id, notify=notify)
        return await asyncio.wait_for(waiting, BOUND_S)
    finally:
        await room.stop()


def test_a_notification_wakes_a_waiting_read(settings: Settings) -> None:
    assert asyncio.run(_wait_after_apply(settings, notify=True, wait_s=BOUND_S)) == 0


def test_without_a_notification_the_wait_runs_out(settings: Settings) -> None:
    # The control: the same commit without NOTIFY is not seen before the deadline.
    assert asyncio.run(_wait_after_apply(settings, notify=False, wait_s=1)) == 1
