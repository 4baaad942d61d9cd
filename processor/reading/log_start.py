"""Where a partition's log starts, and the one check that tells a segment hole from truncation.

Retention removes whole segments from the start of a stream. Offsets inside a stream may have
holes too (RabbitMQ gives an offset to each segment's header chunk, which consumers never see),
so a first record above the offset asked for is either. Only the broker's first offset tells
(``processor.reading.probes.read_first_offset``). Live feeds and replay's range reads ask the
same question through ``check_log_start``, and replay checks every partition up front with
``ensure_log_complete``; both raise ``LogTruncated``, naming the missing ranges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping

from processor import tuning
from processor.reading.errors import LogStartUnknown, LogTruncated, MissingRange
from processor.reading.probes import read_first_offset
from processor.settings import Settings

#: Gives a partition's first available offset (None: the stream is empty or did not answer).
FirstOffsetProbe = Callable[[int], Awaitable[int | None]]


async def check_log_start(probe: FirstOffsetProbe, partition: int, expected: int) -> None:
    """Check that offset ``expected`` is still in the log, after a first record above it.

    Args:
        probe: asks the broker for the partition's first available offset.
        partition: the partition.
        expected: the offset the reader asked for (a checkpoint + 1, or a range's start).

    Raises:
        LogTruncated: the log starts after ``expected``: offsets ``expected..first-1`` are gone.
        LogStartUnknown: the broker did not say (a record just arrived, so the stream is not
            empty: no answer is a failed probe, never "not truncated").
    """
    try:
        first = await probe(partition)
    except Exception as exc:
        raise LogStartUnknown(partition, expected, f"{type(exc).__name__}: {exc}") from exc
    if first is None:
        raise LogStartUnknown(partition, expected, "no answer from the broker")
    if first > expected:
        raise LogTruncated([MissingRange(partition, expected, first - 1)])


def missing_ranges(
    first_offsets: Mapping[int, int | None],
    checkpoints: Mapping[int, int],
    tails: Mapping[int, int],
) -> list[MissingRange]:
    """The offsets each partition lacks at its start. Pure.

    Args:
        first_offsets: each non-empty partition's first readable offset (None: no answer).
        checkpoints: live committed offsets (-1: none).
        tails: each stream's last offset (-1: the stream is empty).

    Returns:
        ``0..first-1`` for every partition whose log does not start at 0, and
        ``0..checkpoint`` for a partition whose stream is empty although offsets up to the
        checkpoint were committed (the stream was deleted and declared again).
    """
    missing = []
    for partition in sorted(set(checkpoints) | set(tails)):
        tail, checkpoint = tails.get(partition, -1), checkpoints.get(partition, -1)
        if tail < 0:
            if checkpoint >= 0:
                missing.append(MissingRange(partition, 0, checkpoint))
            continue
        first = first_offsets.get(partition)
        if first is not None and first > 0:
            missing.append(MissingRange(partition, 0, first - 1))
    return missing


async def _first_offsets(
    settings: Settings, partitions: Iterable[int], wait_s: float
) -> dict[int, int | None]:
    chosen = list(partitions)
    firsts = await asyncio.gather(*(read_first_offset(settings, p, wait_s) for p in chosen))
    return dict(zip(chosen, firsts, strict=True))


def ensure_log_complete(
    settings: Settings, checkpoints: Mapping[int, int], tails: Mapping[int, int]
) -> None:
    """Refuse to replay a truncated log.

    Args:
        settings: broker endpoint.
        checkpoints: live committed offsets per partition (-1: none).
        tails: each partition stream's last offset (-1: empty); non-empty streams are probed.

    Raises:
        LogTruncated: a partition's log does not start at offset 0; the error names each such
            partition and its missing range.
        LogStartUnknown: a non-empty stream did not answer the probe for its first offset.
    """
    probed = [p for p, tail in tails.items() if tail >= 0]
    firsts: dict[int, int | None] = {}
    for wait_s in tuning.FIRST_OFFSET_WAITS_S:
        silent = [p for p in probed if firsts.get(p) is None]
        if not silent:
            break
        firsts.update(asyncio.run(_first_offsets(settings, silent, wait_s)))
    missing = missing_ranges(firsts, checkpoints, tails)
    if missing:
        raise LogTruncated(missing)
    unanswered = sorted(p for p in probed if firsts.get(p) is None)
    if unanswered:
        raise LogStartUnknown(
            unanswered[0],
            0,
            f"the broker did not say where the log of partitions {unanswered} starts; try again",
        )
