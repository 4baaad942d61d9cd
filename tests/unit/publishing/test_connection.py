"""How every AMQP connection is built and which node comes next (no broker needed)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pika
import pika.credentials
import pytest

from processor.api.address import api_base_url, api_client_ssl_context
from processor.publishing.broker_errors import connection_failure_reason
from processor.publishing.connection import BrokerNodes, backoff_delay, connection_parameters
from processor.publishing.errors import BrokerUnreachable
from processor.settings import Settings, SettingsError
from testkit.tls import TestCA


def test_the_nodes_are_tried_in_order_starting_after_the_one_that_failed_last() -> None:
    nodes = BrokerNodes((("a", 1), ("b", 2), ("c", 3)))
    assert nodes.order() == [("a", 1), ("b", 2), ("c", 3)]
    nodes.failed(("b", 2))
    assert nodes.order() == [("c", 3), ("a", 1), ("b", 2)]
    nodes.failed(("c", 3))
    assert nodes.order() == [("a", 1), ("b", 2), ("c", 3)]
    nodes.failed(("x", 9))  # not one of them: nothing changes
    assert nodes.order()[0] == ("a", 1)


def test_plain_parameters_take_the_node_and_the_urls_credentials_vhost_and_options() -> None:
    settings = Settings(amqp_url="amqp://pub:s%40cret@ignored:1/my%2Fvhost?heartbeat=7")
    parameters = connection_parameters(settings, ("node-2", 5673), name="friendship-stream-x")
    assert (parameters.host, parameters.port) == ("node-2", 5673)
    assert parameters.virtual_host == "my/vhost"
    assert parameters.heartbeat == 7
    assert parameters.connection_attempts == 1
    assert parameters.ssl_options is None
    assert parameters.client_properties == {"connection_name": "friendship-stream-x"}
    credentials = parameters.credentials
    assert isinstance(credentials, pika.PlainCredentials)
    assert (credentials.username, credentials.password) == ("pub", "s@cret")


def test_amqps_verifies_the_node_by_its_host_name_and_external_logs_in_by_certificate(
    tmp_path: Path,
) -> None:
    ca = TestCA(tmp_path)
    client = ca.client("fs-publisher")
    settings = Settings(
        amqp_url="amqps://ignored/v",
        broker_tls_ca_file=str(ca.ca_file),
        broker_tls_cert_file=str(client.cert),
        broker_tls_key_file=str(client.key),
        broker_sasl_mechanism="EXTERNAL",
    )
    assert settings.amqp.port == 5671
    parameters = connection_parameters(settings, ("rabbit-3.example", 5671))
    assert parameters.ssl_options is not None
    assert parameters.ssl_options.server_hostname == "rabbit-3.example"
    context = parameters.ssl_options.context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert isinstance(parameters.credentials, pika.credentials.ExternalCredentials)


def test_an_unreadable_ca_file_is_a_settings_error_naming_the_variable(tmp_path: Path) -> None:
    settings = Settings(amqp_url="amqps://h/v", broker_tls_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(SettingsError, match="BROKER_TLS_CA_FILE"):
        connection_parameters(settings, ("h", 5671))


def test_the_back_off_grows_from_the_first_wait_to_the_cap_with_jitter() -> None:
    settings = Settings(reconnect_backoff_s=0.1, reconnect_backoff_max_s=2.0)
    first = [backoff_delay(settings, 1) for _ in range(50)]
    assert all(d == pytest.approx(0.1) for d in first)
    later = [backoff_delay(settings, 10) for _ in range(200)]
    assert all(0.1 <= d <= 2.0 for d in later)
    assert len(set(later)) > 1
    assert max(later) > 1.0


def test_unreachable_names_every_node_tried_and_one_node_reads_as_before() -> None:
    one = BrokerUnreachable([("127.0.0.1:1", "connection refused")])
    assert str(one) == "cannot connect to the broker at 127.0.0.1:1: connection refused"
    two = BrokerUnreachable([("a:1", "connection refused"), ("b:2", "no answer within 5 s")])
    assert str(two) == (
        "cannot connect to any of the 2 broker nodes: a:1: connection refused; "
        "b:2: no answer within 5 s"
    )
    assert two.failed == 0


def test_a_refused_tls_certificate_says_what_to_check() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    reason = connection_failure_reason(error)
    assert "unable to get local issuer certificate" in reason
    assert "BROKER_TLS_CA_FILE" in reason


def test_local_clients_call_the_api_with_its_scheme_on_the_loopback(tmp_path: Path) -> None:
    assert api_base_url(Settings(api_host="0.0.0.0", api_port=8443)) == "http://127.0.0.1:8443"
    assert api_base_url(Settings(api_host="::", api_port=80)) == "http://[::1]:80"
    assert api_client_ssl_context(Settings()) is None
    server = TestCA(tmp_path).server()
    https = Settings(api_tls_cert_file=str(server.cert), api_tls_key_file=str(server.key))
    assert api_base_url(https) == "https://127.0.0.1:8080"
    context = api_client_ssl_context(https)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
