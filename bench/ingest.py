"""Step 1, the raw ingest ceiling: how fast events go through the ``events`` exchange into the
partition streams with publisher confirms (``processor.publishing.publisher.AsyncPublisher``)."""

from __future__ import annotations

from bench.harness import deployment, publish_timed
from bench.results import IngestResult
from bench.workload import Workload
from testkit.services import Services

#: Events published before the clock starts (stream segments, channel, code paths warm).
WARMUP_FRACTION = 0.05


def measure_ingest(services: Services, workload: Workload) -> IngestResult:
    """Publish the workload into a fresh vhost; events per second from the first timed publish
    to the last confirm."""
    warmup = min(2_000, int(len(workload.events) * WARMUP_FRACTION))
    with deployment(services) as settings:
        seconds = publish_timed(settings, workload.events, warmup=warmup)
    timed = len(workload.events) - warmup
    return IngestResult(
        events=timed,
        warmup_events=warmup,
        seconds=seconds,
        events_per_s=timed / seconds if seconds > 0 else 0.0,
    )
