"""The demo's curl line for the processor's own metrics comes from the processor's log."""

from __future__ import annotations

from demo.run import processor_metrics_url

_METRICS = "INFO [MainThread] processor.runtime: processor metrics at http://127.0.0.1:{}/metrics"
_STARTED = "INFO [MainThread] processor.runtime: processor host:{} started: 16 partitions"


def test_the_url_of_the_last_start_wins() -> None:
    lines = [_METRICS.format(9464), _STARTED.format(1), "later", _METRICS.format(40001)]
    lines.append(_STARTED.format(2))
    assert processor_metrics_url(lines) == "http://127.0.0.1:40001/metrics"


def test_no_url_when_the_last_start_served_none() -> None:
    lines = [_METRICS.format(9464), _STARTED.format(1), _STARTED.format(2)]
    assert processor_metrics_url(lines) is None
    assert processor_metrics_url([]) is None
