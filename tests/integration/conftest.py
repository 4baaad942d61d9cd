"""Per-test isolation: every integration test gets its own vhost and database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.publishing.topology import declare_topology
from processor.settings import Settings
from testkit.privacy import no_personal_data
from testkit.services import Services, isolated_settings


@pytest.fixture
def settings(services: Services) -> Iterator[Settings]:
    """Settings on a fresh vhost (topology declared) and a fresh migrated database."""
    with isolated_settings(services) as isolated:
        declare_topology(isolated)
        yield isolated


@pytest.fixture(autouse=True)
def no_personal_data_in_logs(tmp_path: Path) -> Iterator[None]:
    """Around each test: what it and its processes logged at INFO names no child and carries
    no payload (``testkit.privacy.no_personal_data``)."""
    with no_personal_data(tmp_path):
        yield
