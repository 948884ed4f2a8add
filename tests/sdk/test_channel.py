"""The client's gRPC channel: options reach it (a connection of its own, for one)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from coalition.client import Client, ServerError
from coalition_server.server import CoalitionServer

_ESTABLISHED = "01"


def _connections_to(port: int) -> int:
    """Established TCP connections from this host to ``port`` (Linux's /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == _ESTABLISHED and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="counts sockets in /proc/net")
async def test_channel_options_give_each_client_its_own_connection(
    server: CoalitionServer, target: str
) -> None:
    own = (("grpc.use_local_subchannel_pool", 1),)
    assert server.port is not None
    before = _connections_to(server.port)
    async with (
        Client(target, channel_options=own) as first,
        Client(target, channel_options=own) as second,
    ):
        assert (await first.checkpoint()).tree_size == (await second.checkpoint()).tree_size
        # Two clients, two connections: without the option gRPC would share one.
        assert _connections_to(server.port) - before == 2


async def test_channel_options_reach_the_channel(target: str) -> None:
    # A receive limit below any answer's size makes every call fail on the client's side.
    async with Client(target, channel_options=(("grpc.max_receive_message_length", 1),)) as c:
        with pytest.raises(ServerError) as refused:
            await c.checkpoint()
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
