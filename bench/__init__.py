"""The benchmark harness: the processor against the previous thread-pool design and the machine.

``python -m bench`` (``just bench``) runs every step on one seeded, skewed workload, each step in
its own RabbitMQ vhost and PostgreSQL database, prints a table with the targets and writes
``bench-results/bench.json`` and ``bench-results/bench.png``. Nothing here is imported by the
product; the previous design lives only in ``bench.previous_design``.
"""
