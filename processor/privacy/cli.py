"""``python -m processor keys init`` and ``python -m processor erase USER_ID``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from rich.console import Console

from processor.errors import ExitCode
from processor.privacy.data_keys import rewrap_data_keys
from processor.privacy.erasure import erase_user
from processor.privacy.errors import RotationRefused
from processor.privacy.key_ids import check_keys
from processor.privacy.keys import (
    KEK_FILE,
    Keys,
    init_keys,
    load_keys,
    read_key_file,
    write_new_key,
)
from processor.settings import Settings
from projections.database import connect

log = logging.getLogger(__name__)


def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    """``keys init`` or ``keys rotate``; returns the exit code."""
    if args.action == "rotate":
        return _rotate(settings)
    return _init(settings)


def _init(settings: Settings) -> int:
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
        "letters removed; %d other children's dead letters no longer name it as their routing "
        "key; data key %s; %d of the child's events stay readable in the log because they were "
        "published in plain text",
        report.user_ref,
        removed.friendships,
        removed.topic_rows,
        removed.applied_events,
        removed.dead_letters,
        removed.redacted_dead_letters,
        "destroyed" if report.data_key_destroyed else "absent (none was made)",
        report.plain_events,
    )
    Console().print(f"erased: user ref {report.user_ref}", highlight=False)
    return ExitCode.OK


def _rotate(settings: Settings) -> int:
    """Replace the key-encryption key: re-wrap every data key, then swap the key file.

    The new key is written to ``kek.key.new`` first (mode 0600), the data keys are re-wrapped
    in one transaction, and only then does ``kek.key`` become the new key (the old one stays as
    ``kek.key.retired-<kek id>``). A ``kek.key.new`` left by a rotation that stopped part-way is
    taken as the new key, never replaced: the run finishes that rotation. Processors and the
    API must be stopped: they keep the old key in memory.

    Raises:
        RotationRefused: the KEK is given inline (``KEY_ENCRYPTION_KEY``), or a processor is
            running.
        KeyMissing: the stored data keys were wrapped by a key that is neither ``kek.key`` nor
            ``kek.key.new``.
    """
    if settings.key_encryption_key:
        raise RotationRefused(
            "KEY_ENCRYPTION_KEY is set: rotate from a key file in SECRETS_DIR, or re-wrap by "
            "hand (see the README, Children's data)"
        )
    keys = load_keys(settings)
    directory = Path(settings.secrets_dir)
    current, staged = directory / KEK_FILE, directory / f"{KEK_FILE}.new"
    retired = directory / f"{KEK_FILE}.retired-{keys.kek_id}"
    with connect(settings.database_url) as conn:
        live = conn.execute(
            "SELECT count(*) FROM members WHERE heartbeat_at > now() - make_interval(secs => %s)",
            (settings.member_timeout_s,),
        ).fetchone()
        if live and live[0]:
            raise RotationRefused(f"{live[0]} processors are running: stop them and the API first")
        if not write_new_key(staged):
            log.info("finishing the rotation an earlier run began (%s exists)", staged.name)
        new_kek = read_key_file(staged)
        check_keys(conn, keys, rotating_to=Keys(hash_key=keys.hash_key, kek=new_kek).kek_id)
        count = rewrap_data_keys(conn, keys, new_kek)
    if not retired.exists():  # an earlier run may have kept it already
        os.link(current, retired)
    staged.replace(current)  # atomic: kek.key always holds a key that opens the data keys
    log.info(
        "key-encryption key rotated: %d data keys re-wrapped; the old key is kept as %s",
        count,
        retired.name,
    )
    return ExitCode.OK
