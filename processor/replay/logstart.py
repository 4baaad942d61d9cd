"""Is the log complete? Replay refuses a partition whose stream no longer starts at offset 0.

Retention removes whole segments from the start of a stream; a rebuild from what is left would
silently miss events. The first readable offset of each partition comes from the broker
(``processor.streams.read_first_offset``); holes inside a stream are normal (segment header
chunks), a start above 0 is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Final

from processor.replay.errors import LogIncomplete, MissingRange, ReplayError
from processor.settings import Settings
from processor.streams import read_first_offset

#: Seconds to wait for a stream's first chunk; a stream that has a tail is asked again, longer.
PROBE_WAIT_S: Final = (2.0, 8.0)


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
        LogIncomplete: a partition's log does not start at offset 0; the error names each such
            partition and its missing range.
        ReplayError: a non-empty stream did not answer the probe for its first offset.
    """
    probed = [p for p, tail in tails.items() if tail >= 0]
    firsts: dict[int, int | None] = {}
    for wait_s in PROBE_WAIT_S:
        silent = [p for p in probed if firsts.get(p) is None]
        if not silent:
            break
        firsts.update(asyncio.run(_first_offsets(settings, silent, wait_s)))
    missing = missing_ranges(firsts, checkpoints, tails)
    if missing:
        raise LogIncomplete(missing)
    unanswered = sorted(p for p in probed if firsts.get(p) is None)
    if unanswered:
        raise ReplayError(
            f"partitions {unanswered}: the broker did not say where their log starts; "
            "replay cannot tell whether it is complete, try again"
        )
