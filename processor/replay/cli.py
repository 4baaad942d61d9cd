"""``python -m processor replay``: the command's behaviour (``processor.cli`` declares its flags).

Exit codes: 0 success (``--verify``: identical), 1 failure, (``--verify``) differences or
(``--user``) no events of the user in the log, 2 usage or configuration error (as every
command).
"""

from __future__ import annotations

import argparse
from typing import Final

from rich.console import Console

from processor import tuning
from processor.privacy.data_keys import erased_users
from processor.privacy.key_ids import check_key_ids
from processor.privacy.keys import load_keys
from processor.replay.history import read_user_history, user_partitions
from processor.replay.options import ReplayOptions
from processor.replay.progress import ReplayProgress
from processor.replay.report import print_history, print_no_history, print_report
from processor.replay.run import live_fold_rules, swap, verify
from processor.settings import Settings
from projections.database import connect
from projections.fold import Friendship

OK: Final = 0
#: Failure, ``--verify`` found differences, or ``--user`` found no events of the user.
DIFFERENT: Final = 1
#: Columns of the report when stdout is not a terminal.
PIPE_WIDTH: Final = 200


def options_from(args: argparse.Namespace) -> ReplayOptions:
    """The run options of the parsed flags (0 = the default)."""
    return ReplayOptions(
        batch_size=args.batch_size or tuning.REPLAY_BATCH_SIZE,
        threads=args.threads or tuning.REPLAY_THREADS,
        credit=args.credit or tuning.REPLAY_CREDIT,
        measure_read=not args.no_read_rate,
        drop_replaced=args.drop_replaced,
    )


def _live_friendship(settings: Settings, user_id: str) -> tuple[Friendship | None, list[int]]:
    with connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT score, events_applied, last_event_at FROM friendships WHERE user_id = %s",
            (user_id,),
        ).fetchone()
        partitions = user_partitions(conn, user_id)
    live = None if row is None else Friendship(int(row[0]), int(row[1]), row[2])
    return live, partitions


def _user_history(settings: Settings, user_id: str, options: ReplayOptions, out: Console) -> int:
    keys = load_keys(settings)
    with connect(settings.database_url) as conn:
        check_key_ids(conn, keys)  # with another hash key the erasure would not be found
        erased = erased_users(conn, [user_id], keys)
    if erased:
        out.print(
            f"user ref {keys.user_ref(user_id)}: this child was erased; nothing of theirs is "
            "read or shown again",
            highlight=False,
            soft_wrap=True,
        )
        return DIFFERENT
    live, partitions = _live_friendship(settings, user_id)
    history = read_user_history(
        settings,
        user_id,
        partitions or range(settings.partitions),
        keys,
        credit=options.credit,
        rules=live_fold_rules(settings),
    )
    if not history.lines:
        print_no_history(out, history)
        return DIFFERENT
    print_history(out, history, live, keys.user_ref(user_id))
    return OK


def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``replay --verify``, ``--swap`` or ``--user ID``; returns the exit code."""
    out = Console()
    if not out.is_terminal:  # a file or a pipe: no 80-column wrapping of tables and lines
        out = Console(width=max(out.width, PIPE_WIDTH))
    options = options_from(args)
    if args.user is not None:
        return _user_history(settings, args.user, options, out)
    with ReplayProgress(Console(stderr=True)) as progress:
        report = (
            verify(settings, options, progress)
            if args.verify
            else swap(settings, options, progress)
        )
    print_report(out, report)
    if report.comparison is not None and not report.comparison.identical:
        return DIFFERENT
    return OK
