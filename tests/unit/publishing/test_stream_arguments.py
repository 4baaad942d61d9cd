"""The partition streams' queue arguments: the replication factor is always explicit."""

from __future__ import annotations

import pytest

from processor.publishing.topology import stream_arguments
from processor.settings import Settings


@pytest.mark.parametrize("factor", [1, 2, 3, 5])
def test_the_replication_factor_is_the_initial_cluster_size(factor: int) -> None:
    arguments = stream_arguments(Settings(stream_replication_factor=factor))
    assert arguments == {"x-queue-type": "stream", "x-initial-cluster-size": factor}


def test_retention_arguments_sit_beside_the_factor() -> None:
    settings = Settings.from_env(
        {
            "STREAM_REPLICATION_FACTOR": "3",
            "STREAM_MAX_AGE": "7D",
            "STREAM_MAX_LENGTH_BYTES": "1000000",
        }
    )
    assert stream_arguments(settings) == {
        "x-queue-type": "stream",
        "x-initial-cluster-size": 3,
        "x-max-age": "7D",
        "x-max-length-bytes": 1000000,
    }


def test_the_default_factor_is_one_member() -> None:
    assert stream_arguments(Settings.from_env({}))["x-initial-cluster-size"] == 1
