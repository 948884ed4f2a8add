"""Throwaway X.509 certificates for TLS tests: CAs, server certificates for 127.0.0.1 and
localhost, and client certificates for mutual TLS."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a CA certificate and a server certificate + key signed by it."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class KeyPair:
    """Paths of a certificate (PEM) and its private key (PEM, PKCS#8, unencrypted)."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    """A CA whose certificate is written to ``directory/<stem>.pem``; it issues server and
    client certificates, each valid for a day."""

    def __init__(self, directory: Path, stem: str = "ca", name: str = "coalition test CA") -> None:
        now = datetime.now(UTC)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / f"{stem}.pem"
        self.cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self,
        stem: str,
        common_name: str,
        usage: x509.ObjectIdentifier,
        names: list[x509.GeneralName],
    ) -> KeyPair:
        now = datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        pair = KeyPair(self.directory / f"{stem}.pem", self.directory / f"{stem}.key")
        pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(_pem_key(key))
        return pair

    def issue_server(
        self, stem: str = "server", hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    ) -> KeyPair:
        """A server certificate for ``hosts`` (DNS names or IP addresses)."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(stem, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, names)

    def issue_client(self, stem: str = "client", common_name: str = "coalition client") -> KeyPair:
        """A client certificate (extended key usage: client authentication)."""
        return self._issue(stem, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a CA and a server certificate valid for 127.0.0.1 and localhost."""
    ca = CertificateAuthority(directory)
    server = ca.issue_server()
    return TlsFiles(ca.cert_path, server.cert, server.key)
