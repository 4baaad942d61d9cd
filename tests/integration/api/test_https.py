"""HTTPS for the API: a real ``python -m processor api`` with a test CA's server certificate
(``API_TLS_CERT_FILE`` / ``API_TLS_KEY_FILE``), called with httpx verifying that CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from processor.api.address import api_base_url
from processor.settings import Settings
from testkit.processes import api_process, free_port
from testkit.services import make_token
from testkit.tls import TestCA
from tests.integration.support import run_command, settings_env, synthetic_events

pytestmark = pytest.mark.integration


def test_the_api_serves_https_only_with_its_certificate(settings: Settings, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.server()
    https = settings.with_overrides(
        api_port=free_port(), api_tls_cert_file=str(server.cert), api_tls_key_file=str(server.key)
    )
    base = api_base_url(https)
    assert base.startswith("https://127.0.0.1:")
    token = make_token(settings, "ingest")
    body = synthetic_events(1, users=1, seed=11)[0]
    with api_process(https, tmp_path / "api.log"):  # its readiness check went over HTTPS
        with httpx.Client(
            base_url=base, verify=ssl.create_default_context(cafile=ca.ca_file), timeout=30
        ) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            accepted = client.post(
                "/v1/events", content=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert accepted.status_code == 202, accepted.text
            assert accepted.json()["accepted"] == 1
        plain = base.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{plain}/healthz", timeout=10)
        other = TestCA(tmp_path / "other")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(
                f"{base}/healthz",
                verify=ssl.create_default_context(cafile=other.ca_file),
                timeout=10,
            )


def test_unusable_api_tls_files_stop_the_api_naming_the_variables(
    settings: Settings, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    server, wrong = ca.server(), ca.server(stem="other")
    mismatched = settings.with_overrides(
        api_port=free_port(), api_tls_cert_file=str(server.cert), api_tls_key_file=str(wrong.key)
    )
    result = run_command(["api"], settings_env(mismatched), timeout_s=60)
    assert result.returncode == 2, result.stderr
    assert "API_TLS_CERT_FILE=" in result.stderr
    assert "API_TLS_KEY_FILE=" in result.stderr
    assert "Traceback" not in result.stderr
