"""Replay: rebuild the projections from the event log, verify them against live, swap them in.

``python -m processor replay --verify | --swap | --user ID`` (``just replay``); README "Replay"
explains the guarantees. It reads the log with ``processor.reading.ranges`` (after
``reading.log_start.ensure_log_complete``) and applies it with ``processor.applying``, the code
live owners use. One module per job:

- ``shadow``: the shadow schema: create, connect (``search_path``), compare shapes, swap, drop.
- ``applier``: the shadow's partitions on the live ``WorkerPool`` and ``PartitionApplier``.
- ``compare``: live against the shadow, row by row, in SQL.
- ``run``: the phases of ``verify`` and ``swap`` (rebuild, catch-up, the final transaction).
- ``history``: one user's records folded from the log.
- ``progress``, ``report``, ``cli``: bars, printed results, the command.
"""
