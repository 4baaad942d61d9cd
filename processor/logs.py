"""Logging set-up shared by the command-line entry points."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr with time, level, thread and logger; quiet the chatty client libraries."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s",
    )
    for noisy in ("pika", "rstream", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pika's connection adapters log several ERROR lines and a traceback for one refused
    # connection; the product reports each connection failure itself, in one line with host,
    # port and reason (processor.publishing.broker_errors).
    for connection_log in ("pika.adapters", "pika.connection"):
        logging.getLogger(connection_log).setLevel(logging.CRITICAL)
