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
