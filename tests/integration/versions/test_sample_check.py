"""The check a new fold version passes before it is swapped in: the batches' rows equal the
pure fold of the log with the same rule, and a row that does not is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.applying.checkpoint import read_checkpoints
from processor.settings import Settings
from processor.versions.errors import BuildCheckFailed
from processor.versions.sample import check_against_pure_fold
from projections.database import connect
from projections.fold import CONTRACT_RULES
from testkit.rule_change import SAD_COSTS_TWO
from tests.integration.support import drain, outgoing, processor_process, publish, synthetic_events


def test_rows_that_are_the_fold_pass_and_one_changed_row_fails(
    settings: Settings, tmp_path: Path
) -> None:
    publish(settings, outgoing(synthetic_events(2_000, users=120, seed=5)))
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
    with connect(settings.database_url) as conn:
        checkpoints = read_checkpoints(conn)
    check_against_pure_fold(settings, "public", checkpoints, CONTRACT_RULES)
    with pytest.raises(BuildCheckFailed, match="differ from the pure fold of fold version 2"):
        check_against_pure_fold(settings, "public", checkpoints, SAD_COSTS_TWO)
    with connect(settings.database_url) as conn:
        conn.execute(
            "UPDATE topic_metrics SET turns = turns + 1 "
            "WHERE (user_id, topic) = (SELECT user_id, topic FROM topic_metrics LIMIT 1)"
        )
    with connect(settings.database_url) as conn:
        (children,) = conn.execute("SELECT count(*) FROM friendships").fetchone() or (0,)
    with pytest.raises(BuildCheckFailed, match=f"1 of {children} children checked") as failed:
        check_against_pure_fold(settings, "public", checkpoints, CONTRACT_RULES)
    assert "user-" not in str(failed.value), "children are named by user_ref only"
