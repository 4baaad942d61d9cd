"""Every URL the product derives from ``DATABASE_URL`` keeps its query string: the libpq
parameters there (``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``) must reach every
connection (the TLS-only server of ``tests/integration/test_database_tls.py`` checks the
connections themselves)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from processor.access.principals import Principals, default_prefix, settings_as
from processor.settings import Settings
from projections.database import database_name, libpq_url, maintenance_url, sqlalchemy_url
from testkit.services import database_on

TLS = "sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&sslcert=%2Fc.pem&sslkey=%2Fc.key"
URL = f"postgresql://owner:secret@db.example:6432/events?{TLS}"


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_the_driver_urls_keep_the_tls_parameters() -> None:
    expected = query(URL)
    assert expected["sslrootcert"] == "/etc/ca.pem"
    assert query(libpq_url(URL)) == expected
    assert query(libpq_url(URL.replace("postgresql:", "postgresql+psycopg:"))) == expected
    assert sqlalchemy_url(URL) == f"postgresql+psycopg://owner:secret@db.example:6432/events?{TLS}"
    assert database_name(URL) == "events"


def test_the_maintenance_database_is_on_the_same_server_with_the_same_parameters() -> None:
    assert maintenance_url(URL) == f"postgresql://owner:secret@db.example:6432/postgres?{TLS}"


def test_the_roles_urls_keep_server_database_and_tls_parameters() -> None:
    settings = Settings(database_url=URL)
    roles = ("processor", "api", "ingest")
    passwords = {f"fs_events_{r}": f"pw-{r}" for r in roles}
    passwords |= {"fs_events-publisher": "p", "fs_events-reader": "r"}
    principals = Principals(prefix="fs_events", passwords=passwords)
    assert default_prefix(settings) == "fs_events"
    for role in roles:
        scoped = settings_as(settings, principals, role).database_url
        assert scoped == f"postgresql://fs_events_{role}:pw-{role}@db.example:6432/events?{TLS}"


def test_an_ipv6_server_keeps_its_brackets_in_the_roles_urls() -> None:
    settings = Settings(database_url=f"postgresql://owner@[::1]:5432/events?{TLS}")
    passwords = {f"fs_events_{r}": "pw" for r in ("processor", "api", "ingest")}
    passwords |= {"fs_events-publisher": "p", "fs_events-reader": "r"}
    scoped = settings_as(settings, Principals("fs_events", passwords), "api").database_url
    assert scoped == f"postgresql://fs_events_api:pw@[::1]:5432/events?{TLS}"


def test_a_test_database_on_another_server_keeps_the_server_parameters() -> None:
    server = f"postgresql://postgres@127.0.0.1:40000?{TLS}"
    assert (
        database_on(server, "fs_test_1") == f"postgresql://postgres@127.0.0.1:40000/fs_test_1?{TLS}"
    )
