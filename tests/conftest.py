"""Session-wide fixtures: the real services (local or testcontainers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.services import Services, container_services, local_services


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """RabbitMQ and PostgreSQL: the local ones when they answer, else containers."""
    local = local_services()
    if local is not None:
        yield local
        return
    with container_services() as started:
        yield started
