"""Bad input over HTTP: the OpenAPI document fuzzed, adversarial ingest bodies, oversized bodies.

- Schemathesis generates requests for every operation of ``/schema/openapi.json`` (in-process
  ASGI), both fitting the schema and not: no answer may be a 5xx, and every error answer has the
  contract's shape ``{"error": {"code", "message"}}``.
- The adversarial corpus (``tests.faults.adversarial``) posted one body per request: every valid
  body is accepted (202), every invalid one refused (422) with nothing published; a processor
  then applies exactly the accepted events.
- Bodies over 1 MiB are refused with 413, whether their length is declared or streamed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from litestar.testing import TestClient
from schemathesis import GenerationMode

from processor.api import create_app
from processor.api.ingest import MAX_BODY_BYTES
from processor.applying.batch import apply_batch
from processor.applying.checkpoint import ensure_checkpoints
from processor.applying.postgres import PostgresStore
from processor.privacy.keys import load_keys
from processor.reading.log_record import LogRecord
from processor.reading.probes import read_tail_offsets
from processor.settings import Settings
from projections.database import connect
from testkit.services import make_token
from tests.faults.adversarial import draw_corpus, samples, with_fresh_event_id
from tests.faults.scale import size
from tests.faults.support import FaultReport, Row, verify
from tests.integration.support import drain, processor_process

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def assert_error_shape(status: int, body: Any, what: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, f"{what}: {status} {body!r}"
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], what
    assert isinstance(error.get("message"), str) and error["message"], what


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(settings)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {make_token(settings, 'admin')}"
        yield test_client


def is_empty_array(body: bytes) -> bool:
    try:
        return bool(json.loads(body) == [])
    except (ValueError, RecursionError):
        return False


def published(settings: Settings) -> int:
    tails = asyncio.run(read_tail_offsets(settings))
    return sum(tail + 1 for tail in tails.values())


#: Routes that need no token.
OPEN_PATHS = {"/healthz", "/readyz"}
#: What a call without a token may get: refused, or not routed at all.
UNAUTHENTICATED_ANSWERS = {(401, "unauthorized"), (404, "not_found"), (405, "method_not_allowed")}


def test_the_openapi_document_fuzzed_with_and_without_a_token_gets_no_server_error(
    settings: Settings, fault_report: FaultReport
) -> None:
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: Counter[int] = Counter()
    negative = 0
    admin = {"Authorization": f"Bearer {make_token(settings, 'admin')}"}

    def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str] | None) -> Any:
        label = f"{operation.method.upper()} {operation.path} ({mode.value})"
        label += "" if headers else " without a token"

        @hypothesis_settings(
            max_examples=size(15, 150),
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            nonlocal negative
            response = case.call(headers=headers)
            statuses[response.status_code] += 1
            negative += mode is GenerationMode.NEGATIVE
            assert response.status_code < 500, (
                f"{label}: {response.status_code} for {case.method} {case.formatted_path} "
                f"query={case.query} body={str(case.body)[:300]}: {response.text[:300]}"
            )
            if headers is None and operation.path not in OPEN_PATHS:
                # No token, no data: a 401 in the error shape, whatever else was sent; or the
                # router's own 404/405 for a path or method no route has (never a handler's).
                code = response.json().get("error", {}).get("code")
                assert (response.status_code, code) in UNAUTHENTICATED_ANSWERS, (
                    f"{label}: {response.status_code} {response.text[:300]}"
                )
            if response.status_code >= 400:
                assert_error_shape(response.status_code, response.json(), label)

        return call

    no_negative = []
    for operation in operations:
        for headers in (admin, None):
            fuzz(operation, GenerationMode.POSITIVE, headers)()
            try:
                fuzz(operation, GenerationMode.NEGATIVE, headers)()
            except Unsatisfiable:  # nothing in the operation can be made invalid
                no_negative.append(f"{operation.method.upper()} {operation.path}")
    fault_report.add(
        Row(
            "HTTP: OpenAPI document fuzzed (schemathesis), with and without a token",
            rounds=len(operations),
            events=sum(statuses.values()),
            invalid=negative,
            lost=0,
            applied_twice=0,
            notes="answers "
            + ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
            + f"; {len(set(no_negative))} operations without parameters to break"
            + "; lost / twice: nothing is applied here",
        )
    )
    assert not [status for status in statuses if status >= 500]


def test_adversarial_ingest_bodies_are_refused_or_accepted_as_the_contract_says(
    settings: Settings, client: TestClient[Any], tmp_path: Path, fault_report: FaultReport
) -> None:
    corpus = draw_corpus(samples(), size(300, 3_000), seed_value=801)
    accepted: list[bytes] = []
    refused = 0
    for sample in corpus:
        body = sample.body
        if sample.valid:
            body = with_fresh_event_id(sample, uuid.uuid4()).body
        response = client.post("/v1/events", content=body)
        if is_empty_array(body):  # an empty batch, over HTTP: nothing to accept
            assert response.json()["accepted"] == 0
        elif sample.valid:
            assert response.status_code == 202, f"{sample!r}: {response.text[:300]}"
            accepted.append(body)
        else:
            assert response.status_code == 422, f"{sample!r}: {response.status_code}"
            assert_error_shape(422, response.json(), repr(sample))
            refused += 1
    assert published(settings) == len(accepted), "a refused body reached the log"
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
    verify(
        settings,
        fault_report,
        scenario="HTTP: adversarial ingest bodies, one per request",
        rounds=1,
        valid=accepted,
        refused=refused,
        notes=f"{len(accepted)} accepted (202), {refused} refused (422), none published",
    )


def test_oversized_bodies_are_refused_with_413(settings: Settings, client: TestClient[Any]) -> None:
    big = b'{"padding": "' + b"x" * MAX_BODY_BYTES + b'"}'

    def streamed() -> Iterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    declared = client.post("/v1/events", content=big)
    chunked = client.post("/v1/events", content=streamed())
    array = client.post("/v1/events", content=b"[" + b"{}," * (MAX_BODY_BYTES // 3) + b"{}]")
    for response in (declared, chunked, array):
        assert response.status_code == 413, response.text[:300]
        assert_error_shape(413, response.json(), "oversized body")
    assert published(settings) == 0


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/users/a%00b/friendship", 400, "invalid_user_id"),
        ("/v1/users/a%00b/topics", 400, "invalid_user_id"),
        ("/v1/users/%ED%A0%80/friendship", 400, "invalid_user_id"),
        ("/v1/events/%00", 404, "event_not_found"),
        ("/v1/dead-letters?cursor=" + "OTIyMzM3MjAzNjg1NDc3NTgwOA", 400, "invalid_cursor"),  # 2**63
        ("/v1/dead-letters?offset=9223372036854775808", 400, "invalid_parameters"),
    ],
)
def test_edge_values_in_paths_and_queries_get_a_4xx(
    client: TestClient[Any], path: str, status: int, code: str
) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text[:300]
    assert response.json()["error"]["code"] == code


def test_a_dead_letter_whose_event_id_holds_nul_can_be_looked_up(
    settings: Settings, client: TestClient[Any]
) -> None:
    body = json.dumps({"event_id": "bad\x00id", "type": "friendship.adjusted"}).encode()
    with connect(settings.database_url) as conn:
        ensure_checkpoints(conn, settings.partitions)
        apply_batch(
            PostgresStore(conn), 3, [LogRecord(0, body)], -1, "test", keys=load_keys(settings)
        )
    response = client.get("/v1/events/bad%00id")
    assert response.status_code == 200, response.text[:300]
    assert response.json()["status"] == "dead_lettered"
    assert response.json()["offset"] == 0
