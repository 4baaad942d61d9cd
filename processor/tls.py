"""TLS client contexts for the broker connections (AMQP 0.9.1 and the stream protocol).

One function builds the context both protocols use, from the settings, so a CA file or a
client certificate configured once applies to every broker connection the product opens.
"""

from __future__ import annotations

import ssl

from processor.settings import Settings, SettingsError


def broker_ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context that verifies the broker's certificate and host name.

    Trusts ``broker_tls_ca_file`` (PEM) when set, else the system's CAs; presents
    ``broker_tls_cert_file`` / ``broker_tls_key_file`` when set (needed for ``EXTERNAL``).
    TLS 1.2 is the least version accepted.

    Raises:
        SettingsError: a configured file cannot be read or is not PEM (the message names the
            variable and the file).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.broker_tls_ca_file:
        try:
            context.load_verify_locations(cafile=settings.broker_tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(
                f"BROKER_TLS_CA_FILE={settings.broker_tls_ca_file!r} cannot be used: {exc}"
            ) from exc
    if settings.broker_tls_cert_file:
        try:
            context.load_cert_chain(settings.broker_tls_cert_file, settings.broker_tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(
                f"BROKER_TLS_CERT_FILE={settings.broker_tls_cert_file!r} / BROKER_TLS_KEY_FILE="
                f"{settings.broker_tls_key_file!r} cannot be used: {exc}"
            ) from exc
    return context
