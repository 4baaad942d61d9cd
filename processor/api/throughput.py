"""``GET /v1/stats/throughput``: events applied per interval over the last minutes (read scope).

The dashboard's events-per-second chart polls it; the numbers come from the audit of committed
batches (``projections.throughput``).
"""

from __future__ import annotations

from typing import Annotated, Final

from litestar import get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.status_codes import HTTP_400_BAD_REQUEST

from processor.api.auth import requires
from processor.api.context import ApiContext
from processor.api.errors import ApiError, error_responses
from projections.throughput import MAX_INTERVALS, ThroughputView, throughput

#: Longest window, minutes.
MAX_MINUTES: Final = 60
#: Longest interval, seconds.
MAX_STEP_S: Final = 600


@get(
    "/v1/stats/throughput",
    tags=["read"],
    summary="Events applied per interval over the last minutes",
    guards=[requires("read")],
    responses=error_responses(400, 401, 403, 503),
)
async def get_throughput(
    ctx: NamedDependency[ApiContext],
    minutes: Annotated[
        int,
        QueryParameter(ge=1, le=MAX_MINUTES, description=f"window, 1..{MAX_MINUTES} minutes"),
    ] = 10,
    step_s: Annotated[
        int,
        QueryParameter(ge=1, le=MAX_STEP_S, description=f"interval, 1..{MAX_STEP_S} seconds"),
    ] = 10,
) -> ThroughputView:
    """``{"at", "step_s", "intervals": [{"start", "applied", "dead_lettered", "per_s"}]}``:
    the intervals of ``step_s`` seconds (aligned on the Unix epoch) that cover the last
    ``minutes``, oldest first, the last one the current interval; ``applied`` and
    ``dead_lettered`` count the events of live batches committed in it, ``per_s`` is
    ``applied`` per second (per second passed so far, for the current interval).

    Errors: 400 ``invalid_parameters`` (out of range, or more than 720 intervals).
    """
    if minutes * 60 > MAX_INTERVALS * step_s:
        raise ApiError(
            HTTP_400_BAD_REQUEST,
            "invalid_parameters",
            f"at most {MAX_INTERVALS} intervals: raise step_s or lower minutes",
        )
    return await ctx.read(throughput, minutes, step_s)
