"""Command-line interface: ``python -m processor COMMAND`` (the justfile wraps each command).

Exit codes (``processor.errors.ExitCode``): 0 success, 1 failure (the error is logged in one
line), 2 usage or configuration error, 130 interrupted (Ctrl-C) while starting. Every error a
command ends with is a ``ProcessorError`` that carries its exit code; a database or broker
failure becomes one (``ServiceUnavailable``) at the one boundary that meets them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from processor import tuning
from processor.errors import ExitCode, ProcessorError, services_unavailable_as_errors
from processor.logs import configure_logging
from processor.settings import Settings, SettingsError
from processor.terminal import foreground_process_group

log = logging.getLogger("processor")


def _run_processor(settings: Settings, args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    passed_on: list[str] = []
    if args.threads:
        overrides["threads"] = args.threads
        passed_on += ["--threads", str(args.threads)]
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
        passed_on += ["--batch-size", str(args.batch_size)]
    if args.processes:
        overrides["processes"] = args.processes
    settings = settings.with_overrides(**overrides) if overrides else settings
    from processor.supervisor import Supervisor, cpu_count, process_count  # noqa: PLC0415

    count = process_count(settings.processes, settings.partitions, cpu_count())
    if count > 1:
        supervisor = Supervisor(settings, count, passed_on)
        with foreground_process_group():
            return supervisor.run()
    from processor.runtime import Processor  # noqa: PLC0415 - keeps `--help` fast

    processor = Processor(settings)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the batches in flight", signal.Signals(signum).name)
        processor.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with foreground_process_group():
        processor.prepare()
        return processor.run()


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from projections.database import migrate  # noqa: PLC0415

    migrate(settings.database_url)
    log.info("database migrated to the newest revision")
    return ExitCode.OK


def _topology(settings: Settings, _args: argparse.Namespace) -> int:
    from processor.publishing.topology import declare_topology  # noqa: PLC0415

    declare_topology(settings)
    return ExitCode.OK


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415

    from processor.progress import CountBar, rate  # noqa: PLC0415
    from processor.publishing.publish_file import (  # noqa: PLC0415
        check_readable,
        describe_invalid,
        publish_events_of,
        read_events,
        seal_file_events,
    )
    from processor.publishing.topology import declare_topology  # noqa: PLC0415

    path = Path(args.file)
    check_readable(path)
    contents = seal_file_events(settings, path, read_events(path, allow_invalid=args.allow_invalid))
    declare_topology(settings)
    # The bar on a terminal only: in a pipe or a log the line below says it all.
    console = Console(stderr=True)
    with CountBar(console, "publishing", len(contents.events), enabled=console.is_terminal) as bar:
        count = asyncio.run(publish_events_of(settings, contents, bar.update))
    log.info(
        "published %d events from %s in %.2f s (%s), their data encrypted (all confirmed by "
        "the broker)",
        count,
        path,
        bar.seconds,
        rate(count, bar.seconds),
    )
    if contents.invalid:
        log.warning(
            "%d of them are invalid lines, published as they are: the processor dead-letters "
            "them (GET /v1/dead-letters lists them):\n%s",
            len(contents.invalid),
            describe_invalid(path, contents.invalid),
        )
    return ExitCode.OK


def _status(settings: Settings, _args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from processor.publishing.topology import ensure_partition_count  # noqa: PLC0415
    from processor.status import read_partition_status  # noqa: PLC0415
    from processor.versions.builds import read_version_status  # noqa: PLC0415
    from projections.database import connect  # noqa: PLC0415

    ensure_partition_count(settings)
    with connect(settings.database_url) as conn:
        statuses = asyncio.run(read_partition_status(settings, conn))
        versions = read_version_status(conn)
    table = Table(title="partitions")
    for column in ("partition", "checkpoint", "tail", "lag", "owner"):
        table.add_column(column, justify="left" if column == "owner" else "right")
    for s in statuses:
        table.add_row(str(s.partition), str(s.checkpoint), str(s.tail), str(s.lag), s.owner or "-")
    console = Console()
    console.print(table)
    console.print(versions.describe(), highlight=False)
    return ExitCode.OK


def _wait_idle(settings: Settings, args: argparse.Namespace) -> int:
    from processor.status import wait_for_zero_lag  # noqa: PLC0415
    from projections.database import connect  # noqa: PLC0415

    with connect(settings.database_url) as conn:
        wait_for_zero_lag(settings, conn, timeout_s=args.timeout)
    log.info("every partition is at zero lag")
    return ExitCode.OK


def _demo(settings: Settings, _args: argparse.Namespace) -> int:
    from demo.run import run_demo  # noqa: PLC0415

    run_demo(settings)
    return ExitCode.OK


def _down(_settings: Settings, _args: argparse.Namespace) -> int:
    from demo import background  # noqa: PLC0415

    stopped = [name for name in ("api", "processor") if background.stop(name)]
    if stopped:
        log.info("stopped the background %s", " and ".join(stopped))
    else:
        log.info("nothing to stop: no background processor or API of the demo is running")
    return ExitCode.OK


def _api(settings: Settings, _args: argparse.Namespace) -> int:
    from processor.api import serve  # noqa: PLC0415

    with foreground_process_group():
        serve(settings)
    return ExitCode.OK


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from processor.privacy.cli import run_keys  # noqa: PLC0415

    return run_keys(settings, args)


def _erase(settings: Settings, args: argparse.Namespace) -> int:
    from processor.privacy.cli import run_erase  # noqa: PLC0415

    return run_erase(settings, args)


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from processor.access.cli import run_token  # noqa: PLC0415

    return run_token(settings, args)


def _principals(settings: Settings, args: argparse.Namespace) -> int:
    from processor.access.cli import run_principals  # noqa: PLC0415

    return run_principals(settings, args)


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from processor.replay.cli import run_replay  # noqa: PLC0415

    return run_replay(settings, args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="processor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="own partitions and apply their events")
    run.add_argument("--threads", type=int, default=0, help="worker threads (PROCESSOR_THREADS)")
    run.add_argument("--batch-size", type=int, default=0, help="events per batch (BATCH_SIZE)")
    run.add_argument(
        "--processes",
        type=int,
        default=0,
        help="member processes on this machine (PROCESSOR_PROCESSES; default auto: one per core)",
    )
    run.set_defaults(handler=_run_processor)

    commands.add_parser("migrate", help="create the database and tables").set_defaults(
        handler=_migrate
    )
    commands.add_parser("topology", help="declare the exchange and streams").set_defaults(
        handler=_topology
    )
    publish = commands.add_parser("publish", help="publish a JSON Lines file of events")
    publish.add_argument("file")
    publish.add_argument(
        "--allow-invalid",
        action="store_true",
        help="publish invalid lines too (the processor dead-letters them)",
    )
    publish.set_defaults(handler=_publish)
    commands.add_parser("status", help="partition checkpoints, lag and owners").set_defaults(
        handler=_status
    )
    wait = commands.add_parser("wait-idle", help="wait until every partition has zero lag")
    wait.add_argument("--timeout", type=float, default=tuning.WAIT_IDLE_TIMEOUT_S, help="seconds")
    wait.set_defaults(handler=_wait_idle)
    commands.add_parser("demo", help="Topical-Chat through the pipeline").set_defaults(
        handler=_demo
    )
    commands.add_parser("down", help="stop the demo's background processes").set_defaults(
        handler=_down
    )
    commands.add_parser(
        "api", help="serve the HTTP ingest and read API on API_HOST:API_PORT"
    ).set_defaults(handler=_api)
    _add_replay(commands)
    _add_privacy(commands)
    return parser


def _add_privacy(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from processor.access.cli import add_parser as add_token  # noqa: PLC0415 - argparse only
    from processor.access.cli import add_principals_parser  # noqa: PLC0415

    keys = commands.add_parser(
        "keys", help="init: create the missing key files; rotate: replace the KEK"
    )
    keys.add_argument("action", choices=("init", "rotate"))
    keys.set_defaults(handler=_keys)
    erase = commands.add_parser(
        "erase", help="erase a child: rows, dead letters, data key; never applied again"
    )
    erase.add_argument("user_id")
    erase.set_defaults(handler=_erase)
    add_token(commands)
    commands.choices["token"].set_defaults(handler=_token)
    add_principals_parser(commands)
    commands.choices["principals"].set_defaults(handler=_principals)


def _add_replay(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = commands.add_parser(
        "replay", help="rebuild projections from the log: verify, swap in, or a user's history"
    )
    mode = replay.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--verify",
        action="store_true",
        help="rebuild into a shadow schema and compare with live at the same offsets "
        "(exit 1 on any difference)",
    )
    mode.add_argument(
        "--swap",
        action="store_true",
        help="rebuild into a shadow schema, catch up with live, swap it in atomically",
    )
    mode.add_argument("--user", metavar="ID", help="print one user's history from the log")
    replay.add_argument("--batch-size", type=int, default=0, help="records per transaction")
    replay.add_argument("--threads", type=int, default=0, help="threads applying batches")
    replay.add_argument("--credit", type=int, default=0, help="chunks in flight per stream")
    replay.add_argument(
        "--no-read-rate", action="store_true", help="skip the raw stream read measurement"
    )
    replay.add_argument(
        "--drop-replaced",
        action="store_true",
        help="after --swap, drop the replaced tables instead of keeping them",
    )
    replay.set_defaults(handler=_replay)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        configure_logging()
        log.error("configuration error: %s", exc)
        return ExitCode.USAGE
    configure_logging(settings.log_level)
    try:
        with services_unavailable_as_errors():
            return int(args.handler(settings, args))
    except KeyboardInterrupt:
        # Ctrl-C before the command installed its own handler (while it was starting up).
        log.info("interrupted while starting; nothing was done")
        return ExitCode.INTERRUPTED
    except ProcessorError as exc:
        log.error("%s", exc)
        return exc.exit_code


__all__ = ["ExitCode", "build_parser", "main"]
