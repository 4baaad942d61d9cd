"""The processor's metrics settings and its metrics server (a real socket on 127.0.0.1)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from processor.monitoring.metrics import PartitionView, ProcessorMetrics, Totals
from processor.monitoring.server import MetricsServer
from processor.settings import DEFAULT_METRICS_PORT, Settings, SettingsError


@pytest.mark.parametrize(
    ("raw", "port"),
    [
        (None, DEFAULT_METRICS_PORT),
        ("", DEFAULT_METRICS_PORT),
        ("  ", DEFAULT_METRICS_PORT),
        ("0", 0),
        ("9108", 9108),
        ("65535", 65535),
        ("off", None),
        ("OFF", None),
        ("none", None),
        ("disabled", None),
    ],
)
def test_metrics_port_values(raw: str | None, port: int | None) -> None:
    env = {} if raw is None else {"PROCESSOR_METRICS_PORT": raw}
    assert Settings.from_env(env).metrics_port == port


@pytest.mark.parametrize("raw", ["-1", "65536", "nine", "9464.0", "no"])
def test_a_bad_metrics_port_names_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="PROCESSOR_METRICS_PORT"):
        Settings.from_env({"PROCESSOR_METRICS_PORT": raw})


def test_metrics_defaults_and_the_token_stays_out_of_repr() -> None:
    settings = Settings.from_env({})
    assert (settings.metrics_port, settings.metrics_host, settings.metrics_token) == (
        9464,
        "127.0.0.1",
        "",
    )
    chosen = Settings.from_env(
        {"PROCESSOR_METRICS_HOST": "0.0.0.0", "PROCESSOR_METRICS_TOKEN": " s3cret "}
    )
    assert (chosen.metrics_host, chosen.metrics_token) == ("0.0.0.0", "s3cret")
    assert "s3cret" not in repr(chosen)


def _metrics() -> ProcessorMetrics:
    return ProcessorMetrics(
        lambda: Totals(applied=7, duplicates=1, dead_lettered=2, erased_skipped=0, reconnects=3),
        lambda: [
            PartitionView(4, checkpoint=10, tail=15),
            PartitionView(9, checkpoint=-1, tail=-1),
        ],
    )


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_server_binds_localhost_on_an_ephemeral_port_and_renders_the_names() -> None:
    metrics = _metrics()
    metrics.batch_committed(5, 0.02)
    metrics.lease_takes.inc(2)
    metrics.lease_released(lost=False)
    metrics.lease_released(lost=True)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    server.start()
    try:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        status, text = _get(server.url)
    finally:
        server.stop()
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    expected = {
        ("friendship_processor_events_applied_total", ()): 7,
        ("friendship_processor_duplicates_total", ()): 1,
        ("friendship_processor_dead_letters_total", ()): 2,
        ("friendship_processor_skipped_erased_total", ()): 0,
        ("friendship_processor_stream_reconnects_total", ()): 3,
        ("friendship_processor_partition_lag", (("partition", "4"),)): 5,
        ("friendship_processor_partition_lag", (("partition", "9"),)): 0,
        ("friendship_processor_partition_checkpoint", (("partition", "4"),)): 10,
        ("friendship_processor_owned_partitions", ()): 2,
        ("friendship_processor_lease_takes_total", ()): 2,
        ("friendship_processor_lease_handoffs_total", ()): 1,
        ("friendship_processor_leases_lost_total", ()): 1,
        ("friendship_processor_batch_retries_total", ()): 0,
        ("friendship_processor_batch_records_sum", ()): 5,
        ("friendship_processor_batch_commit_duration_seconds_count", ()): 1,
    }
    for key, value in expected.items():
        assert samples[key] == value, key
    with socket.socket() as probe:  # stopped: the port is closed
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0


def test_a_token_is_required_when_set() -> None:
    server = MetricsServer(_metrics().registry, "127.0.0.1", 0, token="right")
    server.start()
    try:
        assert _get(server.url)[0] == 401
        assert _get(server.url, "wrong")[0] == 401
        assert _get(server.url, "righ")[0] == 401
        assert _get(server.url, "right")[0] == 200
    finally:
        server.stop()


def test_a_port_in_use_is_a_settings_error_naming_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        server = MetricsServer(_metrics().registry, "127.0.0.1", port)
        with pytest.raises(SettingsError, match=f"PROCESSOR_METRICS_PORT={port}.*already in use"):
            server.start()
