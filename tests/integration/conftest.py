"""Per-test isolation: every integration test gets its own vhost and database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from processor.publishing.topology import declare_topology
from processor.settings import Settings
from testkit.services import Services, isolated_settings


@pytest.fixture
def settings(services: Services) -> Iterator[Settings]:
    """Settings on a fresh vhost (topology declared) and a fresh migrated database."""
    with isolated_settings(services) as isolated:
        declare_topology(isolated)
        yield isolated
