"""Transport security (issue #7, point 8): TLS and mutual TLS, plaintext refused.

Real servers on 127.0.0.1, port 0, SQLite (the transport does not depend on the store).
Three certificate authorities: one signs the server's certificate, one signs the clients'
certificates the server accepts (``tls_client_ca``), a third signs a rogue client's.

Every refusal is checked to happen in the handshake: the refused client gets UNAVAILABLE
(gRPC's code for a connection that never became usable) and the ledger is unchanged, so
nothing reached a servicer. Each test prints the cases it checked.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner, Result

from coalition.cli import app as client_app
from coalition.client import Client, ServerError
from coalition.errors import CoalitionError
from coalition.keys import SigningKey
from coalition.v1 import party_pb2
from coalition_server import cli as server_cli
from coalition_server.config import BY_FIELD, ConfigError, Settings, check, resolve
from coalition_server.server import CoalitionServer
from tests.integration.certificates import CertificateAuthority, KeyPair

REFUSAL_TIMEOUT = 5.0
"""Seconds a client waits before a refused handshake counts as refused (it fails sooner)."""


@dataclass(frozen=True)
class Pki:
    """The certificates of one test."""

    server_ca: Path
    server: KeyPair
    client_ca: Path
    client: KeyPair
    rogue_ca: Path
    rogue: KeyPair
    """A client certificate from a CA the server does not trust for clients."""
    server_as_client: KeyPair
    """A certificate from the server's CA: trusted for servers, not for clients."""


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    server_ca = CertificateAuthority(directory, "server-ca", "coalition server CA")
    client_ca = CertificateAuthority(directory, "client-ca", "coalition client CA")
    rogue_ca = CertificateAuthority(directory, "rogue-ca", "someone else's CA")
    return Pki(
        server_ca=server_ca.cert_path,
        server=server_ca.issue_server(),
        client_ca=client_ca.cert_path,
        client=client_ca.issue_client("client", "lab-1.example"),
        rogue_ca=rogue_ca.cert_path,
        rogue=rogue_ca.issue_client("rogue", "lab-1.example"),
        server_as_client=server_ca.issue_client("server-ca-client", "lab-1.example"),
    )


def _settings(tmp_path: Path, **tls: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'coalition.db'}",
        origin="coalition.test/log",
        auto_migrate=True,
        **tls,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """A running server; yields its loopback address."""
    server = CoalitionServer(settings)
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=1.0)


def _client(
    target: str,
    *,
    roots: Path | None = None,
    pair: KeyPair | None = None,
    key: SigningKey | None = None,
    tls: bool = False,
    timeout: float = REFUSAL_TIMEOUT,
) -> Client:
    """A client of ``target``: TLS trusting ``roots`` (or the system's, with ``tls``), and
    presenting ``pair``'s certificate when given."""
    return Client(
        target,
        key=key,
        root_certificates=roots.read_bytes() if roots is not None else None,
        tls=tls,
        client_cert=pair.cert.read_bytes() if pair is not None else None,
        client_key=pair.key.read_bytes() if pair is not None else None,
        timeout=timeout,
    )


async def registers(client: Client) -> int:
    """Register a party through ``client``; the tree size its receipt reports."""
    async with client:
        response = await client.register(party_pb2.ROLE_AUDITOR, "auditor")
    return int(response.receipt.tree_size)


async def refusal(client: Client) -> grpc.StatusCode:
    """The status a signed, writing call through ``client`` fails with (it must fail)."""
    async with client:
        with pytest.raises(ServerError) as refused:
            await client.register(party_pb2.ROLE_AUDITOR, "intruder")
    return refused.value.code


async def tree_size(client: Client) -> int:
    """The log's size, read through ``client``."""
    async with client:
        return int((await client.checkpoint()).tree_size)


# --- TLS --------------------------------------------------------------------------------------


async def test_tls_server_serves_tls_and_refuses_plaintext_and_untrusted_roots(
    tmp_path: Path, pki: Pki, figure: Callable[[str], None]
) -> None:
    settings = _settings(tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key)
    async with serving(settings) as target:
        key = SigningKey.generate()
        assert await registers(_client(target, roots=pki.server_ca, key=key)) == 2
        # A client certificate is not asked for, and presenting one does no harm.
        other = SigningKey.generate()
        assert (
            await registers(_client(target, roots=pki.server_ca, pair=pki.client, key=other)) == 3
        )
        cases = {
            "plaintext": _client(target, key=key),
            "TLS trusting the system roots only": _client(target, key=key, tls=True),
            "TLS trusting another CA": _client(target, roots=pki.rogue_ca, key=key),
        }
        for name, client in cases.items():
            assert await refusal(client) == grpc.StatusCode.UNAVAILABLE, name
        assert await tree_size(_client(target, roots=pki.server_ca)) == 3
    figure(f"transport: TLS server: 2 TLS clients served; refused: {', '.join(cases)}")


# --- mutual TLS -------------------------------------------------------------------------------


def _mtls(tmp_path: Path, pki: Pki) -> Settings:
    return _settings(
        tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.client_ca
    )


async def test_mutual_tls_serves_only_clients_with_a_certificate_from_the_client_ca(
    tmp_path: Path, pki: Pki, figure: Callable[[str], None]
) -> None:
    async with serving(_mtls(tmp_path, pki)) as target:
        key = SigningKey.generate()
        good = _client(target, roots=pki.server_ca, pair=pki.client, key=key)
        assert await registers(good) == 2
        cases = {
            "plaintext": _client(target, key=key),
            "TLS without a client certificate": _client(target, roots=pki.server_ca, key=key),
            "a client certificate from another CA": _client(
                target, roots=pki.server_ca, pair=pki.rogue, key=key
            ),
            "a client certificate from the server's CA": _client(
                target, roots=pki.server_ca, pair=pki.server_as_client, key=key
            ),
            "a good client certificate, but an untrusted server": _client(
                target, roots=pki.rogue_ca, pair=pki.client, key=key
            ),
        }
        for name, client in cases.items():
            assert await refusal(client) == grpc.StatusCode.UNAVAILABLE, name
        # Nothing the refused clients sent was written; public reads need the certificate too.
        assert await tree_size(_client(target, roots=pki.server_ca, pair=pki.client)) == 2
        with pytest.raises(ServerError) as anonymous:
            await tree_size(_client(target, roots=pki.server_ca))
        assert anonymous.value.code == grpc.StatusCode.UNAVAILABLE
    figure(f"transport: mutual TLS server: 1 client served; refused: {', '.join(cases)}")


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(CoalitionError, match="client_cert and client_key go together"):
        Client("127.0.0.1:1", client_cert=b"-----BEGIN CERTIFICATE-----")


# --- the CLIs ---------------------------------------------------------------------------------


async def _coalition(*argv: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(
        CliRunner().invoke, client_app, list(argv), env=env, catch_exceptions=False
    )


async def _server_cli(*argv: str) -> Result:
    return await asyncio.to_thread(
        CliRunner().invoke, server_cli.app, list(argv), catch_exceptions=False
    )


async def test_the_cli_presents_a_client_certificate_by_flag_or_environment(
    tmp_path: Path, pki: Pki
) -> None:
    async with serving(_mtls(tmp_path, pki)) as target:
        base = ("--server", target, "--tls-ca", str(pki.server_ca))
        flags = ("--tls-client-cert", str(pki.client.cert), "--tls-client-key", str(pki.client.key))
        result = await _coalition(*base, *flags, "audit", "log-key")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("coalition.test/log+")
        # A signed call too: join as an auditor with a key file.
        key = tmp_path / "me.key"
        SigningKey.generate().save(key)
        result = await _coalition(
            *base, *flags, "--key", str(key), "join", "--role", "auditor", "--name", "Audra"
        )
        assert result.exit_code == 0, result.output
        env = {
            "COALITION_TLS_CLIENT_CERT": str(pki.client.cert),
            "COALITION_TLS_CLIENT_KEY": str(pki.client.key),
        }
        result = await _coalition(*base, "audit", "verify", "--state", str(tmp_path / "s"), env=env)
        assert result.exit_code == 0, result.output

        # Without a certificate, or with a rogue one: unreachable (exit 2), as for plaintext.
        rogue = ("--tls-client-cert", str(pki.rogue.cert), "--tls-client-key", str(pki.rogue.key))
        for args in ((), base, (*base, *rogue)):
            result = await _coalition(*(args or ("--server", target)), "audit", "log-key")
            assert result.exit_code == 2, (args, result.output)
            assert result.stderr.startswith("error: UNAVAILABLE"), result.stderr

    # Mistakes in the options are reported without contacting anyone.
    result = await _coalition(*base, "--tls-client-cert", str(pki.client.cert), "audit", "log-key")
    assert result.exit_code == 2
    assert "--tls-client-cert and --tls-client-key go together" in result.stderr
    missing = tmp_path / "missing.key"
    result = await _coalition(
        *base, "--tls-client-cert", str(pki.client.cert), "--tls-client-key", str(missing),
        "audit", "log-key",
    )  # fmt: skip
    assert result.exit_code == 2
    assert f"cannot read --tls-client-key {missing}" in result.stderr


async def test_health_probes_tls_and_mutual_tls_servers(
    tmp_path: Path, pki: Pki, figure: Callable[[str], None]
) -> None:
    # A certificate for the public name only, as in production: the probe runs on the host
    # itself and dials 127.0.0.1, so it names the server it expects with --server-name.
    ca = CertificateAuthority(tmp_path, "public-ca", "public CA")
    public = ca.issue_server("public", hosts=("coalition.example.org",))
    settings = _settings(
        tmp_path, tls_cert=public.cert, tls_key=public.key, tls_client_ca=pki.client_ca
    )
    async with serving(settings) as target:
        tls = ("health", "--target", target, "--ca", str(ca.cert_path))
        name = ("--server-name", "coalition.example.org")
        client = ("--cert", str(pki.client.cert), "--key", str(pki.client.key))
        result = await _server_cli(*tls, *name, *client)
        assert (result.exit_code, result.stdout.strip()) == (0, f"{target}: SERVING")
        refused = {
            "plaintext": ("health", "--target", target, "--timeout", "3"),
            "no client certificate": (*tls, *name, "--timeout", "3"),
            "the address's name": (*tls, *client, "--timeout", "3"),
            "a rogue client certificate": (
                *tls, *name, "--cert", str(pki.rogue.cert), "--key", str(pki.rogue.key),
            ),
        }  # fmt: skip
        for case, args in refused.items():
            result = await _server_cli(*args)
            assert result.exit_code == 1, (case, result.output)
            assert f"{target}: UNAVAILABLE" in result.output, (case, result.output)
    result = await _server_cli("health", "--target", target, "--cert", str(pki.client.cert))
    assert result.exit_code == 2
    assert "--cert and --key go together" in result.output
    result = await _server_cli("health", "--target", target, *client)
    assert result.exit_code == 2
    assert "give --ca too" in result.output
    figure(f"transport: health over mutual TLS served; refused: {', '.join(refused)}")


# --- the setting ------------------------------------------------------------------------------


def test_the_client_ca_setting_is_named_like_the_others_and_needs_server_tls(
    tmp_path: Path,
) -> None:
    option = BY_FIELD["tls_client_ca"]
    assert (option.flag, option.env, option.key) == (
        "--tls-client-ca",
        "COALITION_TLS_CLIENT_CA",
        "tls_client_ca",
    )
    with pytest.raises(ConfigError) as alone:
        check(Settings(tls_client_ca=Path("clients.pem")))
    assert (
        "tls_client_ca (--tls-client-ca, COALITION_TLS_CLIENT_CA) needs tls_cert and tls_key"
        in (str(alone.value))
    )
    check(Settings(tls_cert=Path("s.pem"), tls_key=Path("s.key"), tls_client_ca=Path("c.pem")))

    # From a config file (relative to it), the environment, and a flag, in that precedence.
    config = tmp_path / "server.toml"
    config.write_text(
        'tls_cert = "server.pem"\ntls_key = "server.key"\ntls_client_ca = "clients.pem"\n'
    )
    from_file = resolve({}, {}, config)
    assert from_file.settings.tls_client_ca == tmp_path / "clients.pem"
    assert from_file.sources["tls_client_ca"] == "config file"
    env = {"COALITION_TLS_CLIENT_CA": "/etc/env.pem"}
    from_env = resolve({}, env, config)
    assert from_env.settings.tls_client_ca == Path("/etc/env.pem")
    from_flag = resolve({"tls_client_ca": "/etc/flag.pem"}, env, config)
    assert from_flag.settings.tls_client_ca == Path("/etc/flag.pem")
    config.write_text("tls_client_ca = 1\n")
    with pytest.raises(ConfigError, match="tls_client_ca must be a path, not an integer"):
        resolve({}, {}, config)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


SERVER = [sys.executable, "-m", "coalition_server"]


@pytest.fixture
def server_process(tmp_path: Path, pki: Pki) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``coalition-server`` as an operator runs it, mutual TLS from the environment."""
    env = _clean_env(
        COALITION_TLS_CERT=str(pki.server.cert),
        COALITION_TLS_KEY=str(pki.server.key),
        COALITION_TLS_CLIENT_CA=str(pki.client_ca),
    )
    process = subprocess.Popen(
        [*SERVER, "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"listening on \S+:(\d+)$", line.strip())
            if found:
                yield process, f"127.0.0.1:{found.group(1)}"
                return
        pytest.fail("the server did not start:\n" + "".join(lines))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def test_the_server_process_takes_mutual_tls_from_its_environment(
    server_process: tuple[subprocess.Popen[str], str], pki: Pki, tmp_path: Path
) -> None:
    _, target = server_process

    def probe(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SERVER, "health", "--target", target, "--ca", str(pki.server_ca), *extra],
            capture_output=True,
            text=True,
            timeout=30,
            env=_clean_env(),
        )

    served = probe("--cert", str(pki.client.cert), "--key", str(pki.client.key))
    assert served.returncode == 0, served.stderr
    assert served.stdout.strip() == f"{target}: SERVING"
    refused = probe("--timeout", "3")
    assert refused.returncode == 1
    assert f"{target}: UNAVAILABLE" in refused.stderr
    shown = subprocess.run(
        [*SERVER, "show-config"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_clean_env(
            COALITION_TLS_CERT=str(pki.server.cert),
            COALITION_TLS_KEY=str(pki.server.key),
            COALITION_TLS_CLIENT_CA=str(pki.client_ca),
        ),
    )
    assert f'tls_client_ca = "{pki.client_ca}"  # environment' in shown.stdout
    # Without the server's own certificate, the setting is refused before anything starts.
    alone = subprocess.run(
        [*SERVER, "--data-dir", str(tmp_path / "x"), "show-config"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_clean_env(COALITION_TLS_CLIENT_CA=str(pki.client_ca)),
    )
    assert alone.returncode == 2
    assert "tls_client_ca (--tls-client-ca, COALITION_TLS_CLIENT_CA) needs tls_cert" in alone.stderr
