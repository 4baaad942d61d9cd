"""Replay: rebuild the projections from the event log, verify them against live, swap them in.

``python -m processor replay --verify | --swap | --user ID`` (``just replay``); README "Replay"
explains the guarantees. One module per job:

- ``wire``: a minimal read-only client of the RabbitMQ stream protocol (bulk reads).
- ``reader``: offset ranges of every partition, read concurrently and handed over in batches.
- ``logstart``: refuse a truncated log (a partition that no longer starts at offset 0).
- ``shadow``: the shadow schema: create, connect (``search_path``), compare shapes, swap, drop.
- ``applier``: worker threads applying batches to the shadow with ``processor.applying.batch``.
- ``compare``: live against the shadow, row by row, in SQL.
- ``run``: the phases of ``verify`` and ``swap`` (rebuild, catch-up, the final transaction).
- ``history``: one user's records folded from the log.
- ``progress``, ``report``, ``cli``: bars, printed results, the command.
"""
