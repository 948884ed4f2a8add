"""Server TLS: a client trusting the CA connects; a plaintext client is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from coalition.client import Client, ServerError
from coalition.keys import SigningKey
from coalition.v1 import party_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer

from .certificates import make_tls_files


async def test_tls_server_serves_tls_clients_and_refuses_plaintext(
    settings: Settings, tmp_path: Path
) -> None:
    tls = make_tls_files(tmp_path)
    server = CoalitionServer(
        dataclasses.replace(settings, tls_cert=tls.server_cert, tls_key=tls.server_key)
    )
    port = await server.start()
    try:
        target = f"localhost:{port}"
        ca = tls.ca_cert.read_bytes()
        async with Client(target, key=SigningKey.generate(), root_certificates=ca) as client:
            response = await client.register(party_pb2.ROLE_AUDITOR, "Auditor")
            assert response.receipt.tree_size == 2  # after the coalition's own entry
        async with Client(target, timeout=3) as plaintext:
            with pytest.raises(ServerError) as refused:
                await plaintext.checkpoint()
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        # A client that does not trust the CA does not get through either.
        async with Client(target, tls=True, timeout=3) as untrusting:
            with pytest.raises(ServerError) as untrusted:
                await untrusting.checkpoint()
            assert untrusted.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop()
