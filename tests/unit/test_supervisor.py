"""How many member processes ``processor run`` starts, and each one's metrics port."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.settings import Settings, SettingsError, parse_processes
from processor.supervisor import cgroup_cpu_limit, child_metrics_port, cpu_count, process_count


@pytest.mark.parametrize(
    ("cpus", "partitions", "expected"),
    [
        (1, 16, 1),  # a single core: one process, no supervisor
        (2, 16, 2),  # this machine
        (8, 16, 8),
        (32, 16, 16),  # never more members than partitions: the rest would idle
        (4, 1, 1),
    ],
)
def test_auto_is_one_process_per_core_up_to_the_partition_count(
    cpus: int, partitions: int, expected: int
) -> None:
    assert process_count(None, partitions, cpus) == expected


def test_an_explicit_count_is_taken_as_it_is() -> None:
    assert process_count(3, 16, 2) == 3
    assert process_count(1, 16, 64) == 1


def test_cpu_count_is_at_least_one() -> None:
    assert cpu_count() >= 1


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1)],
)
def test_a_cgroup_v2_cpu_limit_counts_in_whole_cores(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert cgroup_cpu_limit(tmp_path) == expected


def test_a_cgroup_v1_quota_counts_and_minus_one_is_no_limit(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_limit(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("", None), ("auto", None), (" AUTO ", None), ("1", 1), ("4", 4)],
)
def test_processor_processes_reads_auto_or_a_count(raw: str | None, expected: int | None) -> None:
    assert parse_processes(raw) == expected


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_processor_processes_refuses_anything_else_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="PROCESSOR_PROCESSES"):
        parse_processes(raw)


def test_settings_default_to_auto() -> None:
    assert Settings.from_env({}).processes is None
    assert Settings.from_env({"PROCESSOR_PROCESSES": "2"}).processes == 2


def test_child_k_serves_its_metrics_on_the_port_plus_k() -> None:
    assert [child_metrics_port(9464, k) for k in range(3)] == ["9464", "9465", "9466"]
    assert child_metrics_port(0, 1) == "0"  # any free port, for each
    assert child_metrics_port(None, 1) == "off"
