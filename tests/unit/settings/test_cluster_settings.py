"""The cluster, TLS and timeout settings: address lists, TLS defaults, the read deadline."""

from __future__ import annotations

import pytest

from processor.settings import Settings, SettingsError, parse_addresses
from testkit.services import settings_env


def test_address_lists_keep_order_take_default_ports_and_ipv6() -> None:
    assert parse_addresses("X", "a:1, b ,[::1]:3,[fe80::1],a:1", 9) == (
        ("a", 1),
        ("b", 9),
        ("::1", 3),
        ("fe80::1", 9),
    )


@pytest.mark.parametrize("raw", ["", "a:1,,b:2", "a:0", "a:70000", "a:x", ":5", "[::1]x"])
def test_bad_address_lists_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="X"):
        parse_addresses("X", raw, 9)


def test_without_lists_the_url_and_stream_port_name_one_node() -> None:
    settings = Settings.from_env({"AMQP_URL": "amqp://u:p@h1:5700/v", "STREAM_PORT": "5600"})
    assert settings.amqp_addresses == (("h1", 5700),)
    assert settings.stream_addresses == (("h1", 5600),)


def test_stream_addresses_default_to_each_amqp_host_with_the_stream_port() -> None:
    settings = Settings.from_env({"AMQP_ADDRESSES": "h1:5672,h2,h1:5673", "STREAM_PORT": "5600"})
    assert settings.amqp_addresses == (("h1", 5672), ("h2", 5672), ("h1", 5673))
    assert settings.stream_addresses == (("h1", 5600), ("h2", 5600))


def test_tls_follows_the_url_scheme_unless_stream_tls_says_otherwise() -> None:
    assert not Settings.from_env({}).stream_tls_enabled
    tls = Settings.from_env({"AMQP_URL": "amqps://u:p@h/v"})
    assert tls.amqp_tls and tls.stream_tls_enabled
    assert not Settings.from_env({"AMQP_URL": "amqps://h/v", "STREAM_TLS": "no"}).stream_tls_enabled


def test_the_read_deadline_is_two_heartbeats_unless_set() -> None:
    assert Settings.from_env({"STREAM_HEARTBEAT_S": "3"}).read_deadline_s == 6.0
    assert Settings.from_env({"STREAM_READ_DEADLINE_S": "1.5"}).read_deadline_s == 1.5


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"BROKER_SASL_MECHANISM": "CRAM-MD5"}, "BROKER_SASL_MECHANISM"),
        ({"BROKER_SASL_MECHANISM": "external"}, "EXTERNAL needs TLS"),
        ({"BROKER_TLS_CERT_FILE": "c.pem"}, "BROKER_TLS_KEY_FILE"),
        ({"API_TLS_KEY_FILE": "k.pem"}, "API_TLS_CERT_FILE"),
        ({"STREAM_REPLICATION_FACTOR": "0"}, "STREAM_REPLICATION_FACTOR"),
        ({"RECONNECT_BACKOFF_S": "5", "RECONNECT_BACKOFF_MAX_S": "1"}, "RECONNECT_BACKOFF"),
    ],
)
def test_inconsistent_settings_are_refused_with_the_variable_named(
    env: dict[str, str], names: str
) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_external_with_tls_and_a_client_certificate_is_accepted() -> None:
    settings = Settings.from_env(
        {
            "AMQP_URL": "amqps://h/v",
            "BROKER_SASL_MECHANISM": "external",
            "BROKER_TLS_CERT_FILE": "c.pem",
            "BROKER_TLS_KEY_FILE": "k.pem",
        }
    )
    assert settings.broker_sasl_mechanism == "EXTERNAL"


def test_a_subprocess_environment_carries_every_cluster_and_tls_setting() -> None:
    settings = Settings(
        amqp_url="amqps://u:p@h/v",
        amqp_addresses_raw="h:1,h:2",
        stream_addresses_raw="h:3",
        stream_replication_factor=3,
        stream_tls=False,
        broker_tls_ca_file="ca.pem",
        stream_heartbeat_s=2.0,
        stream_read_deadline_s=3.0,
        reconnect_backoff_s=0.1,
        reconnect_backoff_max_s=0.5,
        api_tls_cert_file="a.pem",
        api_tls_key_file="a.key",
    )
    again = Settings.from_env(settings_env(settings))
    for name in (
        "amqp_addresses",
        "stream_addresses",
        "stream_replication_factor",
        "stream_tls",
        "broker_tls_ca_file",
        "stream_heartbeat_s",
        "read_deadline_s",
        "reconnect_backoff_s",
        "reconnect_backoff_max_s",
        "api_tls_cert_file",
        "api_tls_key_file",
    ):
        assert getattr(again, name) == getattr(settings, name), name
