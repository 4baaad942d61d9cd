"""A throwaway certificate authority for TLS tests, made with ``cryptography``.

``TestCA(folder)`` writes ``ca.pem``; ``server(name, hosts)`` a server certificate and key for
those host names and IP addresses; ``client(common_name)`` a client certificate (for the
broker's ``EXTERNAL`` mechanism, whose user is the certificate's common name). Keys are EC
P-256, certificates valid for one day. Every file is readable by everyone, so servers that run
as another user (``rabbitmq``, ``postgres``) can read them; the key files are test keys only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


class TestCA:
    """A CA whose files live in ``folder`` (created, made world-readable)."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path, name: str = "friendship-stream test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = _write(
            folder / "ca.pem", self._cert.public_bytes(serialization.Encoding.PEM)
        )

    def _issue(
        self, stem: str, common_name: str, usage: x509.ObjectIdentifier, hosts: list[str]
    ) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return CertFiles(
            cert=_write(self.folder / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            key=_write(self.folder / f"{stem}.key", _key_pem(key)),
        )

    def server(
        self, stem: str = "server", hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> CertFiles:
        """A server certificate for ``hosts`` (IP addresses and DNS names), signed by this CA."""
        return self._issue(stem, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, list(hosts))

    def client(self, common_name: str, stem: str = "client") -> CertFiles:
        """A client certificate whose subject's common name is ``common_name``."""
        return self._issue(stem, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])
