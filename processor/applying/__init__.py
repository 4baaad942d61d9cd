"""Applying batches: the one code path of live processing and replay.

``batch`` holds the rules of one batch over a ``store`` (``postgres`` or ``memory``);
``decode`` is its pure first step; ``checkpoint`` owns every statement on checkpoint rows;
``applier`` applies a partition's batches in order, with retries and rejected-record isolation;
``engine`` schedules partitions on worker threads.
"""
