"""``python -m processor token create|list|revoke`` (``just token ...``)."""

from __future__ import annotations

import argparse
import logging
import shlex
from datetime import timedelta
from pathlib import Path

from processor.access.principals import PRINCIPALS_FILE, provision, remove, settings_as
from processor.access.tokens import TokenInfo, create_token, list_tokens, revoke_token
from processor.errors import ExitCode
from processor.privacy.keys import load_keys
from processor.settings import Settings
from projections.database import connect

log = logging.getLogger(__name__)


def run_token(settings: Settings, args: argparse.Namespace) -> int:
    """Create, list or revoke API tokens; returns the exit code.

    ``create`` prints the token as its last line of output, once: only its keyed hash is kept.

    Raises:
        TokenExists, UnknownToken, BadScope: as ``processor.access.tokens``.
        KeyMissing: the hash key is not configured.
    """
    with connect(settings.database_url) as conn:
        if args.action == "create":
            expires = timedelta(days=args.expires_days) if args.expires_days else None
            token = create_token(conn, load_keys(settings), args.name, args.scope, expires)
            log.info(
                "token %r created with scope %s%s; it is shown once, below",
                args.name,
                args.scope,
                f", expiring in {args.expires_days:g} days" if expires else "",
            )
            print(token)  # noqa: T201 - the command's output: the token, as its last line
        elif args.action == "list":
            _print_tokens(list_tokens(conn))
        else:
            revoke_token(conn, args.name)
            log.info("token %r revoked: refused from its next use on", args.name)
    return ExitCode.OK


def _print_tokens(tokens: list[TokenInfo]) -> None:
    # Here, not at the top: every command's parser imports this module (``processor run`` too).
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="API tokens")
    for column in ("name", "scope", "created", "expires", "revoked"):
        table.add_column(column)
    for token in tokens:
        table.add_row(
            token.name,
            token.scope,
            f"{token.created_at:%Y-%m-%d %H:%M}",
            f"{token.expires_at:%Y-%m-%d %H:%M}" if token.expires_at else "never",
            f"{token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "-",
        )
    Console().print(table)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``token`` and its actions on the CLI's sub-commands."""
    token = commands.add_parser("token", help="create, list or revoke API tokens")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a token; prints it once, as the last line")
    create.add_argument("--scope", required=True, choices=("ingest", "read", "admin"))
    create.add_argument("--name", required=True, help="unique name, e.g. robot-app")
    create.add_argument(
        "--expires-days", type=float, default=0, help="days until it expires (default: never)"
    )
    actions.add_parser("list", help="every token: name, scope, created, expires, revoked")
    revoke = actions.add_parser("revoke", help="refuse the token from its next use on")
    revoke.add_argument("name")


def run_principals(settings: Settings, args: argparse.Namespace) -> int:
    """``principals create|remove|env PROCESS``: the least-privilege users and roles."""
    if args.action == "create":
        principals = provision(settings, args.prefix)
        log.info(
            "broker users %s and %s, database roles %s ready (passwords in %s)",
            principals.publisher,
            principals.reader,
            ", ".join(principals.role(p) for p in ("processor", "api", "ingest")),
            Path(settings.secrets_dir) / PRINCIPALS_FILE,
        )
    elif args.action == "remove":
        remove(settings, args.prefix)
        log.info("the broker users and database roles are gone")
    else:
        principals = provision(settings, args.prefix)
        scoped = settings_as(settings, principals, args.process)
        for name, value in (
            ("AMQP_URL", scoped.amqp_url),
            ("DATABASE_URL", scoped.database_url),
            ("STREAM_USERNAME", scoped.stream_username),
            ("STREAM_PASSWORD", scoped.stream_password),
        ):
            print(f"export {name}={shlex.quote(value)}")  # noqa: T201 - the command's output
    return ExitCode.OK


def add_principals_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``principals`` on the CLI's sub-commands."""
    parser = commands.add_parser(
        "principals", help="least-privilege broker users and database roles: create|remove|env"
    )
    parser.add_argument("action", choices=("create", "remove", "env"))
    parser.add_argument(
        "process", nargs="?", default="processor", choices=("processor", "api", "ingest")
    )
    parser.add_argument("--prefix", default=None, help="default: fs_ + the database name")
