"""The demo's curl lines for the processor's own metrics come from the processor's log."""

from __future__ import annotations

from demo.run import processor_metrics_urls

_METRICS = "INFO [MainThread] processor.runtime: processor metrics at http://127.0.0.1:{}/metrics"
_STARTED = "INFO [MainThread] processor.runtime: processor host:{} started: 16 partitions"
_MEMBERS = "INFO [MainThread] processor.supervisor: processor started {} member processes (pids 7)"


def test_the_url_of_the_last_start_wins() -> None:
    lines = [_METRICS.format(9464), _STARTED.format(1), "later", _METRICS.format(40001)]
    lines.append(_STARTED.format(2))
    assert processor_metrics_urls(lines) == ["http://127.0.0.1:40001/metrics"]


def test_no_url_when_the_last_start_served_none() -> None:
    lines = [_METRICS.format(9464), _STARTED.format(1), _STARTED.format(2)]
    assert processor_metrics_urls(lines) == []
    assert processor_metrics_urls([]) == []


def test_every_member_of_the_last_supervised_start_has_its_url() -> None:
    old = [_METRICS.format(9464), _STARTED.format(1)]
    interleaved = [_METRICS.format(9464), _METRICS.format(9465), _STARTED.format(3)]
    lines = [*old, _MEMBERS.format(2), *interleaved, _STARTED.format(4), "later"]
    assert processor_metrics_urls(lines) == [
        "http://127.0.0.1:9464/metrics",
        "http://127.0.0.1:9465/metrics",
    ]
    # a single process started afterwards replaces them
    lines += [_METRICS.format(9470), _STARTED.format(5)]
    assert processor_metrics_urls(lines) == ["http://127.0.0.1:9470/metrics"]
