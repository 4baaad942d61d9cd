"""Fault scenarios: per-test isolation (own vhost and database) and the figures table.

Every scenario records one row (scenario, rounds, events, invalid inputs tried, lost, applied
twice) before it asserts; the rows are printed as a table at the end of the session and, with
``FAULTS_REPORT=path``, written there as Markdown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.publishing.topology import declare_topology
from processor.settings import Settings
from testkit.figures import print_figures
from testkit.privacy import no_personal_data
from testkit.services import Services, isolated_settings
from tests.faults.support import FaultReport, render_table

_REPORT = pytest.StashKey[FaultReport]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: a fault scenario (tests/faults)")
    config.stash[_REPORT] = FaultReport()


@pytest.fixture
def settings(services: Services) -> Iterator[Settings]:
    """Settings on a fresh vhost (topology declared) and a fresh migrated database."""
    with isolated_settings(services) as isolated:
        declare_topology(isolated)
        yield isolated


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> FaultReport:
    """Where a scenario records its figures."""
    return request.config.stash[_REPORT]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    report = config.stash.get(_REPORT, None)
    if report is None or not report.rows:
        return
    print_figures(terminalreporter, "fault scenarios", render_table(report.rows), "FAULTS_REPORT")


@pytest.fixture(autouse=True)
def no_personal_data_in_logs(tmp_path: Path) -> Iterator[None]:
    """Around each test: what it and its processes logged at INFO names no child and carries
    no payload (``testkit.privacy.no_personal_data``)."""
    with no_personal_data(tmp_path):
        yield
