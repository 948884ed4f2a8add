"""A gRPC proxy in front of the test server that can misbehave on purpose.

It forwards raw bytes and the call's metadata unchanged (so call signatures still verify),
and can refuse the first calls of a method with UNAVAILABLE (recording what it was sent) or
rewrite a server stream's messages, to show how the SDK copes with both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

STREAMING_RESPONSES = {"Fetch", "WatchWithdrawals"}
STREAMING_REQUESTS = {"UploadContent"}

Rewrite = Callable[[int, bytes], bytes]


@dataclass
class Proxy:
    """Forwards every call to ``target``; see the module docstring for the misbehaviour."""

    target: str
    unavailable: dict[str, int] = field(default_factory=dict)
    """Method name (e.g. ``Withdraw``) -> how many calls to refuse first."""
    lose_answers: dict[str, int] = field(default_factory=dict)
    """Method name -> how many answers to lose: forwarded, then UNAVAILABLE to the caller."""
    rewrite: dict[str, Rewrite] = field(default_factory=dict)
    """Streaming method name -> function of (message position, bytes) giving new bytes."""
    requests: dict[str, list[bytes]] = field(default_factory=dict)
    """Method name -> the request bytes of every call received, refused or forwarded."""
    port: int = 0
    _server: grpc.aio.Server | None = None
    _channel: grpc.aio.Channel | None = None

    async def start(self) -> str:
        self._channel = grpc.aio.insecure_channel(self.target)
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers([_Handler(self)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        if self._channel is not None:
            await self._channel.close()

    def _refuse(self, name: str, raw: bytes) -> bool:
        self.requests.setdefault(name, []).append(raw)
        left = self.unavailable.get(name, 0)
        if left > 0:
            self.unavailable[name] = left - 1
            return True
        return False

    @property
    def channel(self) -> grpc.aio.Channel:
        assert self._channel is not None
        return self._channel


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (k, v)
        for k, v in (context.invocation_metadata() or ())
        if k.startswith("coalition-") and isinstance(v, str)
    )


async def _relay_error(
    context: grpc.aio.ServicerContext[Any, Any], exc: grpc.aio.AioRpcError
) -> None:
    context.set_trailing_metadata(tuple(exc.trailing_metadata() or ()))
    await context.abort(exc.code(), exc.details() or "")


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = details.method
        name = method.rsplit("/", 1)[-1]
        proxy = self.proxy

        async def unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            if proxy._refuse(name, raw):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the proxy says try again")
            stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = proxy.channel.unary_unary(method)
            try:
                response: bytes = await stub(raw, metadata=_metadata(context))
            except grpc.aio.AioRpcError as exc:
                await _relay_error(context, exc)
                raise
            if proxy.lose_answers.get(name, 0) > 0:
                proxy.lose_answers[name] -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the answer got lost")
            return response

        async def server_stream(
            raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            if proxy._refuse(name, raw):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the proxy says try again")
            stub: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = proxy.channel.unary_stream(
                method
            )
            rewrite = proxy.rewrite.get(name)
            call = stub(raw, metadata=_metadata(context))
            try:
                position = 0
                async for message in call:
                    yield rewrite(position, message) if rewrite else message
                    position += 1
            except grpc.aio.AioRpcError as exc:
                await _relay_error(context, exc)

        async def client_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> bytes:
            stub: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = proxy.channel.stream_unary(
                method
            )
            try:
                response: bytes = await stub(requests, metadata=_metadata(context))
            except grpc.aio.AioRpcError as exc:
                await _relay_error(context, exc)
                raise
            return response

        if name in STREAMING_RESPONSES:
            return grpc.unary_stream_rpc_method_handler(server_stream)
        if name in STREAMING_REQUESTS:
            return grpc.stream_unary_rpc_method_handler(client_stream)
        return grpc.unary_unary_rpc_method_handler(unary)
