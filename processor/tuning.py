"""Timeouts, intervals, credits and batch sizes of the runtime that are not settings.

Each is named once, here; what an operator tunes is in ``processor.settings`` instead. Units are
in the names (``_S`` seconds, ``_MS`` milliseconds). Changing one changes behaviour the tests
pin, so each says what depends on it.
"""

from __future__ import annotations

from typing import Final

# -- reading ---------------------------------------------------------------------------------

#: Chunks the broker may send ahead of the live reader, per subscription.
LIVE_CREDIT: Final = 256
#: Chunks in flight per subscription when replay reads ranges. This log has one or two small
#: messages per chunk, so the broker's cost per chunk decides the read rate; a large credit
#: keeps it busy. Memory is bounded by back-pressure, not by the credit.
REPLAY_CREDIT: Final = 2048
#: Most stream connections of one range read: one per partition up to this, then shared. The
#: broker serves each connection in its own process, so several connections read in parallel.
RANGE_READ_MAX_CONNECTIONS: Final = 32
#: Seconds without a record (and without back-pressure) after which a range read is stalled.
RANGE_READ_STALL_S: Final = 60.0
#: Defaults of ``RECONNECT_BACKOFF_S`` / ``RECONNECT_BACKOFF_MAX_S`` (the settings decide).
RECONNECT_MIN_S: Final = 0.2
RECONNECT_MAX_S: Final = 5.0
#: Seconds between two reads of the streams' tails by a ``TailCache`` (the API's stats and
#: metrics, a processor's lag gauges): how stale a tail may be, plus the read's own time.
TAILS_REFRESH_S: Final = 1.0
#: Seconds between two reads of the owned streams' tails by a processor's ``TailCache`` (its
#: lag gauges). Slower than the API's: each round subscribes every owned stream on the broker
#: (segment and index files opened), in every processor; the gauge also uses the reader's last
#: received offset, which is live, and Prometheus scrapes every 15 s by default.
PROCESSOR_TAILS_REFRESH_S: Final = 10.0
#: Most seconds a request waits for the first read of the tails after the API started.
TAILS_FIRST_READ_WAIT_S: Final = 5.0
#: The largest stream-protocol frame the client accepts, bytes (the broker's ``frame_max`` wins
#: when lower; a connection's answers and requests wait at most the read deadline, a setting).
STREAM_FRAME_MAX: Final = 1 << 20
#: The largest ``Deliver`` frame accepted, bytes: it holds one whole chunk, whose size the
#: stream's writer decides (it batches what its mailbox holds), not ``frame_max``.
STREAM_MAX_CHUNK_FRAME: Final = 64 << 20
#: Batches of records a live feed holds before the reader waits (back-pressure).
FEED_BUFFERED_BATCHES: Final = 4
#: Seconds allowed for a stream connection's polite close, and for the broker's answer to it.
STREAM_CLOSE_TIMEOUT_S: Final = 5.0
STREAM_CLOSE_ANSWER_S: Final = 2.0
#: Seconds the live reader's loop thread may take to start, and to stop.
READER_START_TIMEOUT_S: Final = 10.0
READER_STOP_TIMEOUT_S: Final = 10.0
#: Seconds to wait for a stream's first chunk when probing where its log starts; a stream that
#: did not answer is asked again with the second, longer wait.
FIRST_OFFSET_WAITS_S: Final = (2.0, 8.0)
#: Seconds between a range read's checks of its outcome, connections and stalls.
RANGE_READ_POLL_S: Final = 0.05
#: Chunks the broker may send a probe (the least the stream client asks for).
PROBE_CREDIT: Final = 2
#: Seconds to wait for the last chunks when probing the streams' tails; silent streams are
#: asked again with four times the wait before they count as empty.
TAIL_PROBE_WAIT_S: Final = 0.25

# -- applying --------------------------------------------------------------------------------

#: Attempts of one batch on transient database errors before its owner gives it up.
BATCH_ATTEMPTS: Final = 5
#: Exponential back-off with full jitter between attempts: multiplier and cap, in seconds.
BATCH_RETRY_WAIT_S: Final = 0.05
BATCH_RETRY_WAIT_MAX_S: Final = 2.0
#: Records per transaction when replaying (live uses the ``BATCH_SIZE`` setting).
REPLAY_BATCH_SIZE: Final = 10_000
#: Worker threads applying replayed batches.
REPLAY_THREADS: Final = 2
#: Records a user's history reads per batch (``replay --user``: nothing is written).
HISTORY_BATCH_SIZE: Final = 5_000

# -- the processor process -------------------------------------------------------------------

#: Seconds between progress log lines.
PROGRESS_EVERY_S: Final = 10.0
#: Seconds a worker may take to finish its batch at shutdown before its connection is closed.
SHUTDOWN_TIMEOUT_S: Final = 60.0
#: Seconds allowed to deliver a cancel request for a statement still running at shutdown.
CANCEL_TIMEOUT_S: Final = 5.0

#: Seconds between two looks at the lag while waiting for zero lag (``just wait-idle``).
LAG_POLL_S: Final = 0.5

# -- replay ----------------------------------------------------------------------------------

#: Longest wait, in seconds, for a swap's table locks (readers hold them briefly).
SWAP_TABLE_LOCK_TIMEOUT_S: Final = 5.0
#: Longest wait, in seconds, for the live checkpoint rows (the batches in flight).
SWAP_CHECKPOINT_LOCK_TIMEOUT_S: Final = 60.0
#: Tries of the final swap step when its locks time out, and the back-off between them
#: (``attempt * SWAP_RETRY_WAIT_S`` seconds).
SWAP_ATTEMPTS: Final = 3
SWAP_RETRY_WAIT_S: Final = 0.5
#: Most catch-up rounds before a replay's final step, and the most offsets that step may still
#: have to apply (under the snapshot, or while live writes wait for a swap).
REPLAY_CATCH_UP_ROUNDS: Final = 10
REPLAY_FINAL_GAP: Final = 20_000
#: Seconds ``just wait-idle`` waits for zero lag by default.
WAIT_IDLE_TIMEOUT_S: Final = 600.0

# -- publishing ------------------------------------------------------------------------------

#: Unconfirmed publishes one publisher keeps in flight.
PUBLISH_MAX_IN_FLIGHT: Final = 10_000
#: Seconds a publisher waits for its connection to close.
PUBLISHER_CLOSE_TIMEOUT_S: Final = 10.0
#: Events per confirmed chunk when a file (or the demo's data) is published.
PUBLISH_CHUNK: Final = 5000
#: Attempts to get one chunk confirmed (``just publish``, the demo): each retry publishes the
#: chunk's unconfirmed events again, on the next broker node, after the reconnect back-off.
PUBLISH_ATTEMPTS: Final = 5
#: Attempts to declare the topology when its broker connection is lost midway (a node killed
#: while a processor starts): each declares everything again on a new connection.
TOPOLOGY_ATTEMPTS: Final = 5
#: Longest one AMQP connection attempt to one broker node may take (TCP, TLS, AMQP handshake),
#: in seconds, before the next node is tried.
BROKER_NODE_CONNECT_TIMEOUT_S: Final = 5.0

# -- the HTTP API ----------------------------------------------------------------------------

#: Longest wait, in seconds, to open the API's broker connection.
API_BROKER_CONNECT_TIMEOUT_S: Final = 10.0
#: Longest wait, in seconds, for the broker to confirm one ingest request's events.
API_PUBLISH_TIMEOUT_S: Final = 30.0
#: Seconds to wait for a new database connection, and for a free one from the pool.
API_DB_CONNECT_TIMEOUT_S: Final = 5
#: Longest a read query may run, in milliseconds.
API_STATEMENT_TIMEOUT_MS: Final = 15_000
#: Worker threads for the API's blocking database calls (one API process), and the size of its
#: connection pool: a read holds one of each for its few round trips, so 50 clients queue on
#: these, not on the event loop. Also the most connections of the async point-read pool.
API_DB_THREADS: Final = 16
#: Connections the API's async point-read pool keeps open when idle (it grows to
#: ``API_DB_THREADS`` under load).
API_READ_POOL_MIN: Final = 4
#: Most requests whose token checks (and point reads) go in one statement
#: (``processor.api.prefetch``): those that came in the same turn of the event loop, up to this.
API_CHECK_BATCH_MAX: Final = 64
#: Seconds allowed for the API's tail cache (and a processor's metrics server) to stop.
TAILS_STOP_TIMEOUT_S: Final = 5.0
#: Seconds uvicorn gives requests in flight at shutdown.
API_SHUTDOWN_GRACE_S: Final = 10

# -- read-your-writes (processor.api.waiting) --------------------------------------------------

#: Seconds between two re-checks of the waiting reads while the API's LISTEN connection is
#: down (a notification may be missed then), and the longest pause between reconnects.
WAIT_LISTENER_DOWN_POLL_S: Final = 0.5
#: Seconds between two re-checks of the waiting reads while LISTEN works: a safety net only
#: (a notification is never lost while connected); it bounds the harm of a silent bug.
WAIT_SAFETY_POLL_S: Final = 5.0
#: Least time, in seconds, given to a read's own token lookup and first check of its events
#: whatever is left of its ``wait_s`` (``wait_s=0`` still checks once); both are bounded by the
#: rest of ``wait_s`` (and this floor), in the event loop and by ``statement_timeout``.
WAIT_CHECK_FLOOR_S: Final = 0.5
#: Seconds between two deletions of expired write tokens (by every API process; cheap, indexed).
WRITE_TOKEN_CLEANUP_INTERVAL_S: Final = 60.0
#: Most expired write tokens one statement of a cleanup deletes (a cleanup repeats it while a
#: round deleted a full batch).
WRITE_TOKEN_CLEANUP_BATCH: Final = 10_000

# -- fold versions (processor.versions) ------------------------------------------------------

#: Most children whose rebuilt rows are checked against the pure fold before a new fold version
#: is swapped in (all of them when there are fewer).
BUILD_CHECK_USERS: Final = 2_000
#: Seconds between two records of a build's progress in ``projection_builds``.
BUILD_PROGRESS_EVERY_S: Final = 1.0
#: Seconds a processor waits before it tries again to build a new fold version when another
#: build or ``replay --swap`` holds the swap lock, or a build failed.
BUILD_RETRY_S: Final = 30.0
