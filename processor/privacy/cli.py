"""``python -m processor keys init`` and ``python -m processor erase USER_ID``."""

from __future__ import annotations

import argparse
import logging

from rich.console import Console

from processor.errors import ExitCode
from processor.privacy.erasure import erase_user
from processor.privacy.keys import init_keys, load_keys
from processor.settings import Settings
from projections.database import connect

log = logging.getLogger(__name__)


def run_keys(settings: Settings, _args: argparse.Namespace) -> int:
    """Create the key files that are missing (``just services`` runs it); returns 0.

    Raises:
        KeyMissing: a key given inline is malformed.
    """
    created = init_keys(settings)
    for path in created:
        log.info("created %s (back it up: see the README, Children's data)", path)
    load_keys(settings)  # both present and well-formed now
    if not created:
        log.info("the keys are in place")
    return ExitCode.OK


def run_erase(settings: Settings, args: argparse.Namespace) -> int:
    """Erase a child (``privacy.erasure``) and print the report (no personal data in it)."""
    keys = load_keys(settings)
    with connect(settings.database_url) as conn:
        report = erase_user(conn, args.user_id, keys)
    removed = report.removed
    if report.already_erased:
        log.info("user ref %s was erased at %s already", report.user_ref, report.erased_at)
    log.info(
        "user ref %s erased: %d friendship rows, %d topic rows, %d applied events, %d dead "
        "letters removed; data key %s; %d of the child's events stay readable in the log "
        "because they were published in plain text",
        report.user_ref,
        removed.friendships,
        removed.topic_rows,
        removed.applied_events,
        removed.dead_letters,
        "destroyed" if report.data_key_destroyed else "absent (none was made)",
        report.plain_events,
    )
    Console().print(f"erased: user ref {report.user_ref}", highlight=False)
    return ExitCode.OK
