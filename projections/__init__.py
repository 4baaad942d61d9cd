"""Projections: the pure fold and event-id rule, the tables that store them, migrations, reads.

``fold`` and ``event_ids`` are pure (no I/O); ``tables`` and ``migrations`` describe the store;
``queries`` answers the read API; ``database`` connects and migrates; ``advisory_locks`` lists
every advisory-lock key the product takes.
"""
