"""A processor process's own Prometheus metrics, scraped over HTTP from a real process.

Each test runs ``python -m processor run`` on its own vhost and database with
``PROCESSOR_METRICS_PORT=0`` (the test kit's default): the process logs the port it bound.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from processor.ownership.membership import OWNER_APPLICATION_PREFIX
from processor.publishing.publisher import OutgoingEvent
from processor.settings import Settings
from projections.database import connect
from tests.integration.support import (
    drain,
    outgoing,
    processor_process,
    publish,
    settings_env,
    synthetic_events,
)

pytestmark = pytest.mark.integration

_URL = re.compile(r"processor metrics at (http://([\d.]+):(\d+)/metrics)")


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def metrics_url(log_path: Path) -> tuple[str, str]:
    """The metrics URL and host the process logged at start."""
    found: list[re.Match[str]] = []

    def logged() -> bool:
        match = _URL.search(log_path.read_text(errors="replace"))
        if match:
            found.append(match)
        return bool(match)

    wait_until(logged, "the metrics URL in the log")
    return found[0].group(1), found[0].group(2)


def scrape(url: str, token: str | None = None) -> dict[str, float]:
    """``{'name{label="v"}': value}`` of every sample."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def status_of(url: str, token: str | None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def lags(samples: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in samples.items() if k.startswith("friendship_processor_partition_lag")}


def test_counters_move_and_lag_reaches_zero(settings: Settings, tmp_path: Path) -> None:
    bodies = synthetic_events(400, users=60, seed=13)
    log_path = tmp_path / "processor.log"
    with processor_process(settings, log_path) as process:
        url, host = metrics_url(log_path)
        assert host == "127.0.0.1"  # the default: this machine only
        wait_until(
            lambda: scrape(url)["friendship_processor_owned_partitions"] == 16, "all partitions"
        )
        before = scrape(url)
        assert before["friendship_processor_events_applied_total"] == 0
        assert before["friendship_processor_lease_takes_total"] == 16
        assert "process_cpu_seconds_total" in before

        publish(settings, outgoing(bodies))
        duplicate = outgoing(bodies[:1])
        invalid = OutgoingEvent(str(uuid.uuid4()), "kid-invalid", b"not json at all")
        publish(settings, [*duplicate, invalid])
        drain(settings)

        def settled() -> bool:
            samples = scrape(url)
            return samples["friendship_processor_dead_letters_total"] == 1 and all(
                v == 0 for v in lags(samples).values()
            )

        wait_until(settled, "the counters to settle and every lag gauge at 0")
        after = scrape(url)
        assert after["friendship_processor_events_applied_total"] == len(bodies)
        assert after["friendship_processor_duplicates_total"] == 1
        assert after["friendship_processor_dead_letters_total"] == 1
        assert after["friendship_processor_skipped_erased_total"] == 0
        assert len(lags(after)) == 16
        checkpoints = {
            k: v
            for k, v in after.items()
            if k.startswith("friendship_processor_partition_checkpoint")
        }
        # Offsets start at 0: the checkpoints sum to the records read minus one per partition.
        assert sum(checkpoints.values()) == len(bodies) + 2 - 16
        batches = after["friendship_processor_batch_records_count"]
        assert 1 <= batches <= len(bodies) + 2
        assert after["friendship_processor_batch_records_sum"] == len(bodies) + 2
        assert after["friendship_processor_batch_commit_duration_seconds_count"] == batches
        assert after["friendship_processor_batch_retries_total"] == 0
        assert after["friendship_processor_stream_reconnects_total"] == 0
        assert after["friendship_processor_lease_handoffs_total"] == 0
        assert after["friendship_processor_leases_lost_total"] == 0
        assert after["process_cpu_seconds_total"] > 0
    assert process.returncode == 0  # SIGTERM stops it cleanly, metrics server and all
    assert "processor metrics at http://127.0.0.1:" in log_path.read_text()


def test_a_second_process_takes_half_and_the_first_hands_off(
    settings: Settings, tmp_path: Path
) -> None:
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with processor_process(settings, first_log):
        first_url, _ = metrics_url(first_log)
        wait_until(
            lambda: scrape(first_url)["friendship_processor_owned_partitions"] == 16, "16 owned"
        )
        with processor_process(settings, second_log):
            second_url, _ = metrics_url(second_log)
            assert second_url != first_url  # port 0: each process its own port

            def balanced() -> bool:
                owned = [
                    scrape(u)["friendship_processor_owned_partitions"]
                    for u in (first_url, second_url)
                ]
                return owned == [8, 8]

            wait_until(balanced, "8 partitions each")
            first = scrape(first_url)
            second = scrape(second_url)
            assert first["friendship_processor_lease_handoffs_total"] == 8
            assert second["friendship_processor_lease_takes_total"] == 8
            # The released partitions' gauges are gone from the first process.
            assert len(lags(first)) == 8
            assert set(lags(first)).isdisjoint(lags(second))


def test_a_lease_lost_with_its_connection_is_counted_and_retaken(
    settings: Settings, tmp_path: Path
) -> None:
    log_path = tmp_path / "processor.log"
    with processor_process(settings, log_path):
        url, _ = metrics_url(log_path)
        wait_until(lambda: scrape(url)["friendship_processor_owned_partitions"] == 16, "16 owned")
        with connect(settings.database_url) as conn:
            (terminated,) = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE %s "
                "ORDER BY pid LIMIT 1",
                (f"{OWNER_APPLICATION_PREFIX}%",),
            ).fetchone() or (False,)
        assert terminated

        def retaken() -> bool:
            samples = scrape(url)
            return (
                samples["friendship_processor_leases_lost_total"] == 1
                and samples["friendship_processor_lease_takes_total"] == 17
                and samples["friendship_processor_owned_partitions"] == 16
            )

        wait_until(retaken, "the lost lease counted and the partition taken again")
        assert scrape(url)["friendship_processor_lease_handoffs_total"] == 0


def test_a_token_protects_the_metrics(settings: Settings, tmp_path: Path) -> None:
    token = "metrics-" + uuid.uuid4().hex
    log_path = tmp_path / "processor.log"
    with processor_process(settings.with_overrides(metrics_token=token), log_path):
        url, _ = metrics_url(log_path)
        assert status_of(url, None) == 401
        assert status_of(url, "wrong-" + token) == 401
        assert status_of(url, token) == 200
        assert "friendship_processor_events_applied_total" in scrape(url, token)
    assert token not in log_path.read_text()


def test_a_metrics_port_in_use_stops_the_processor_with_a_clear_error(
    settings: Settings, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        env = settings_env(settings.with_overrides(metrics_port=port))
        result = subprocess.run(
            [sys.executable, "-m", "processor", "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert f"PROCESSOR_METRICS_PORT={port}" in errors[0]
    assert "already in use" in errors[0]
    assert "Traceback" not in result.stderr


def test_metrics_off_serves_nothing(settings: Settings, tmp_path: Path) -> None:
    log_path = tmp_path / "processor.log"
    with processor_process(settings.with_overrides(metrics_port=None), log_path):
        wait_until(lambda: "started" in log_path.read_text(), "the processor to start")
    assert "processor metrics at" not in log_path.read_text()
