"""``--tls-ca``: the CLI talks to a TLS server, trusting the given root."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from tests.cli.helpers import Cli


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own root, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coalition test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def fresh_dir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.fixture
async def tls_server(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A TLS server: its address and the root certificate to trust."""
    cert, key = self_signed(tmp_path)
    server = CoalitionServer(
        Settings(
            listen="127.0.0.1:0",
            data_dir=tmp_path / "data",
            db_url=db_url,
            origin="coalition.test/log",
            auto_migrate=True,
            tls_cert=cert,
            tls_key=key,
        )
    )
    await server.start()
    try:
        yield f"127.0.0.1:{server.port}", cert
    finally:
        await server.stop(grace=1.0)


async def test_tls_with_the_right_root(tls_server: tuple[str, Path], tmp_path: Path) -> None:
    target, ca = tls_server
    cli = Cli(target)
    result = await cli("--tls-ca", str(ca), "audit", "log-key")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("coalition.test/log+")
    result = await cli("--tls-ca", str(ca), "audit", "verify", "--state", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output


async def test_tls_fails_without_the_root(tls_server: tuple[str, Path], tmp_path: Path) -> None:
    target, _ = tls_server
    # Plaintext to a TLS port, and TLS with a root that did not sign the server's cert.
    other, _ = self_signed(fresh_dir(tmp_path / "other"))
    for args in ([], ["--tls-ca", str(other)]):
        result = await Cli(target)(*args, "audit", "log-key")
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: UNAVAILABLE")


async def test_unreadable_tls_root(tmp_path: Path) -> None:
    result = await Cli("127.0.0.1:9")("--tls-ca", str(tmp_path / "missing.pem"), "audit", "log-key")
    assert result.exit_code == 2
    assert "cannot read --tls-ca" in result.stderr
