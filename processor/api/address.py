"""Where this machine's clients reach the API, and how they trust its certificate.

The demo, its health checks and the test kit call the API they started on this machine. With
HTTPS (``API_TLS_CERT_FILE`` / ``API_TLS_KEY_FILE``) they trust exactly the certificate the API
serves (the certificate file itself is the trust anchor), so a self-signed certificate, one
from a private CA or one from a public CA all work without another setting. Clients elsewhere
verify it with their CA as usual (``curl --cacert ca.pem``).
"""

from __future__ import annotations

import ssl
from typing import Final

from processor.settings import Settings, SettingsError

#: ``API_HOST`` values that bind every address; a local client calls the loopback instead.
_ANY_ADDRESS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def api_scheme(settings: Settings) -> str:
    """``"https"`` when the API serves TLS (``API_TLS_CERT_FILE`` set), else ``"http"``."""
    return "https" if settings.api_tls_cert_file else "http"


def api_base_url(settings: Settings) -> str:
    """The API's base URL for a client on this machine, e.g. ``https://127.0.0.1:8080`` (no
    trailing slash); ``API_HOST`` ``0.0.0.0`` or ``::`` becomes the loopback address."""
    host = _ANY_ADDRESS.get(settings.api_host, settings.api_host)
    shown = f"[{host}]" if ":" in host else host
    return f"{api_scheme(settings)}://{shown}:{settings.api_port}"


def api_client_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context a client on this machine uses for the API: it trusts the certificate in
    ``API_TLS_CERT_FILE`` (and any CA certificate in that file) and checks the host name; None
    for plain HTTP.

    Raises:
        SettingsError: the certificate file cannot be read or is not PEM (names the variable).
    """
    if not settings.api_tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=settings.api_tls_cert_file)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"API_TLS_CERT_FILE={settings.api_tls_cert_file!r} cannot be used: {exc}"
        ) from exc
    # The served certificate itself is the trust anchor, whoever signed it.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
