"""infra/services.sh on this machine, whose RabbitMQ and PostgreSQL already run: quick, idempotent.

The decisions (install, start, restart or not) are tested on a PATH of stubs in
tests/unit/test_services_script.py; here the real script meets the real servers, and must
neither start, install nor restart anything.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from testkit.services import local_services

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[3] / "infra" / "services.sh"
ACTIONS = ("installing", "starting", "restarting", "enabling", "apt-get", "docker compose")


def _run(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    # The project's defaults: no SERVICES_* knob (no restart allowed), the default URLs.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SERVICES_") and name not in {"AMQP_URL", "DATABASE_URL"}
    }
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result, time.monotonic() - started


@pytest.fixture(autouse=True)
def _real_services_up() -> None:
    if local_services() is None:
        pytest.skip("this machine's RabbitMQ and PostgreSQL are not running")


def test_ready_services_twice_quickly_and_nothing_changes() -> None:
    for _ in range(2):
        result, elapsed = _run()
        assert result.returncode == 0, result.stderr
        assert "ready: RabbitMQ" in result.stderr
        assert "PostgreSQL" in result.stderr
        assert not any(action in result.stderr for action in ACTIONS), result.stderr
        assert elapsed < 5, f"took {elapsed:.1f}s: the ready path must stay fast"


def test_plan_on_this_machine_has_nothing_to_do() -> None:
    result, _ = _run("--plan")
    assert result.returncode == 0, result.stderr
    assert "RabbitMQ: running on 127.0.0.1:5672" in result.stderr
    assert "nothing to do" in result.stderr
    assert "would" not in result.stderr
