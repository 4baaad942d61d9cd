"""Names of the stored tables' columns and schemas that code without SQLAlchemy needs.

``projections.tables`` describes the tables with SQLAlchemy and re-exports these; the batch's
SQL (``processor.applying.postgres``) and the erasure import them from here, so a processor
process does not load SQLAlchemy to apply batches.
"""

from __future__ import annotations

from typing import Final

from schemas.events import SENTIMENTS

#: Column names of the per-label child-turn counts, in ``SENTIMENTS`` order.
SENTIMENT_COLUMNS: Final = tuple(f"sentiment_{label}" for label in SENTIMENTS)
#: Prefix of every schema a replay creates (``processor.replay.shadow``): shadows
#: ``replay_<id>`` and the snapshots ``replay_<id>_replaced`` a swap keeps.
REPLAY_SCHEMA_PREFIX: Final = "replay_"
#: Suffix of the schema that keeps the tables a swap replaced.
REPLACED_SUFFIX: Final = "_replaced"
