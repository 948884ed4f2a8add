"""One place where every RPC is decoded, authenticated and has its errors mapped.

Handlers are built from the service descriptors with raw-bytes deserialisation, so the
call signature is checked against the exact bytes received. Servicer methods are plain
``async def Method(self, request, call) -> Response`` functions marked with ``@rpc(policy)``.

Every call that finishes here, however it ends, is written to the access log (logger
``coalition_server.access``, INFO: method, status code, duration, caller key id) and reported
to the optional :class:`RpcObserver` (the server's Prometheus metrics).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2, status_pb2

from coalition.v1 import party_pb2
from coalition_server.api.auth import Authenticator, Caller, Policy
from coalition_server.domain.errors import (
    DomainError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from coalition_server.store.database import is_unavailable
from coalition_server.store.parties import PartyRecord

log = logging.getLogger(__name__)
access_log = logging.getLogger("coalition_server.access")

ERROR_DOMAIN = "coalition"
F = TypeVar("F", bound=Callable[..., Any])


def rpc(policy: Policy) -> Callable[[F], F]:
    """Mark a servicer method as an RPC with an authentication policy."""

    def mark(fn: F) -> F:
        fn.__coalition_policy__ = policy  # type: ignore[attr-defined]
        return fn

    return mark


@dataclass(frozen=True)
class Call:
    """What a servicer method knows about the call besides its request."""

    method: str
    raw_request: bytes
    caller: Caller | None
    context: grpc.aio.ServicerContext[Any, Any]

    def require_caller(self) -> Caller:
        """The authenticated caller (only absent for unsigned calls to public methods)."""
        if self.caller is None:
            raise UnauthenticatedError("MISSING_CREDENTIALS", "this call must be signed")
        return self.caller

    def require_role(self, role: party_pb2.Role.ValueType) -> PartyRecord:
        """The caller's registration, which must have ``role``; else PERMISSION_DENIED."""
        party = self.require_caller().require_party()
        if party.role != role:
            raise PermissionDeniedError(
                "ROLE_NOT_ALLOWED",
                f"this call is for {party_pb2.Role.Name(role).removeprefix('ROLE_').lower()}s",
            )
        return party


def status_for(error: DomainError) -> grpc.Status:
    """The rich status (google.rpc.Status with ErrorInfo) of a domain error."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])
    return _RichStatus(error.code, error.message, status)


class Encoded:
    """A response already in wire format, sent as it is: the server serialises every
    response with ``SerializeToString()``. For handlers that hold their response as bytes
    already (every mutation's, encoded once by the sequencer for idempotent replay; sealed
    segments) rather than a message: parsing it back only to encode it again costs time."""

    __slots__ = ("_wire",)

    def __init__(self, wire: bytes) -> None:
        self._wire = wire

    def SerializeToString(self) -> bytes:
        return self._wire


@dataclass(frozen=True)
class _RichStatus(grpc.Status):
    code: grpc.StatusCode
    details: str
    status: status_pb2.Status

    @property
    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:  # type: ignore[override]
        return (("grpc-status-details-bin", self.status.SerializeToString()),)


def _as_domain_error(exc: BaseException) -> DomainError | None:
    if isinstance(exc, DomainError):
        return exc
    if is_unavailable(exc):
        return UnavailableError("DATABASE_UNAVAILABLE", "the database is unavailable; retry")
    return None


class RpcObserver(Protocol):
    """Told about every finished RPC (implemented by coalition_server.metrics)."""

    def rpc_finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """``method`` (``/package.Service/Method``) ended with ``code`` after ``seconds``."""


@dataclass
class _Served:
    """How one call is going: filled in as it proceeds, reported when it ends."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    caller: Caller | None = None


class Dispatcher:
    """Builds generic handlers for servicers, sharing one authenticator."""

    def __init__(self, authenticator: Authenticator, observer: RpcObserver | None = None) -> None:
        self._auth = authenticator
        self._observer = observer

    def handler(self, service: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
        """A generic handler serving every method of ``service`` from ``servicer``."""
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in service.methods:
            impl = getattr(servicer, method.name, None)
            policy = getattr(impl, "__coalition_policy__", None)
            if impl is None or not isinstance(policy, Policy):
                raise TypeError(f"{type(servicer).__name__}.{method.name} is not an @rpc method")
            full_name = f"/{service.full_name}/{method.name}"
            request_cls = GetMessageClass(method.input_type)
            if method.client_streaming:
                handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                    self._client_streaming(full_name, request_cls, impl, policy),
                    response_serializer=_serialize,
                )
            elif method.server_streaming:
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                    self._streaming(full_name, request_cls, impl, policy),
                    response_serializer=_serialize,
                )
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    self._unary(full_name, request_cls, impl, policy),
                    response_serializer=_serialize,
                )
        return grpc.method_handlers_generic_handler(service.full_name, handlers)

    async def _prepare(
        self,
        method: str,
        request_cls: type[Message],
        raw: bytes,
        policy: Policy,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[Message, Call]:
        request = _parse(request_cls, raw)
        metadata = {
            key: value
            for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)
        }
        caller = await self._auth.authenticate(method, metadata, raw, policy)
        return request, Call(method, raw, caller, context)

    @contextlib.asynccontextmanager
    async def _served(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[_Served]:
        """Run a call's body: map its errors to statuses, then log and count it."""
        served = _Served()
        start = time.perf_counter()
        try:
            yield served
        except Exception as exc:
            served.code = _status_code(exc, context)
            await _abort(method, context, exc)
        except BaseException:
            # The client went away (or the server is stopping): the task is cancelled.
            served.code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._finished(method, served, time.perf_counter() - start)

    def _finished(self, method: str, served: _Served, seconds: float) -> None:
        if self._observer is not None:
            self._observer.rpc_finished(method, served.code, seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return
        duration_ms = round(seconds * 1000, 3)
        # The caller's key id is public (derived from its public key); nothing from the
        # request, its signature or the response is logged.
        key_id = served.caller.key_id if served.caller is not None else None
        access_log.info(
            "%s %s %.1fms caller=%s",
            method,
            served.code.name,
            duration_ms,
            key_id or "-",
            extra={
                "method": method,
                "code": served.code.name,
                "duration_ms": duration_ms,
                "caller_key_id": key_id,
            },
        )

    def _unary(
        self,
        method: str,
        request_cls: type[Message],
        impl: Callable[[Message, Call], Awaitable[Message]],
        policy: Policy,
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]:
        async def behaviour(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
            async with self._served(method, context) as served:
                request, call = await self._prepare(method, request_cls, raw, policy, context)
                served.caller = call.caller
                return await impl(request, call)
            raise AssertionError("unreachable: _served re-raises or aborts")

        return behaviour

    def _client_streaming(
        self,
        method: str,
        request_cls: type[Message],
        impl: Callable[[AsyncIterator[Message], Call], Awaitable[Message]],
        policy: Policy,
    ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]:
        # A client stream is authenticated once, on its metadata, with the digest of b"".
        async def behaviour(
            raw_stream: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Message:
            async with self._served(method, context) as served:
                metadata = {
                    key: value
                    for key, value in (context.invocation_metadata() or ())
                    if isinstance(value, str)
                }
                caller = served.caller = await self._auth.authenticate(
                    method, metadata, b"", policy
                )
                call = Call(method, b"", caller, context)

                async def messages() -> AsyncIterator[Message]:
                    async for raw in raw_stream:
                        yield _parse(request_cls, raw)

                return await impl(messages(), call)
            raise AssertionError("unreachable: _served re-raises or aborts")

        return behaviour

    def _streaming(
        self,
        method: str,
        request_cls: type[Message],
        impl: Callable[[Message, Call], AsyncIterator[Message]],
        policy: Policy,
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Message]]:
        async def behaviour(
            raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Message]:
            async with self._served(method, context) as served:
                request, call = await self._prepare(method, request_cls, raw, policy, context)
                served.caller = call.caller
                async for response in impl(request, call):
                    yield response

        return behaviour


def _parse(request_cls: type[Message], raw: bytes) -> Message:
    try:
        return request_cls.FromString(raw)
    except (DecodeError, RecursionError):
        raise InvalidArgumentError(
            "MALFORMED_REQUEST", f"the request is not a valid {request_cls.__name__}"
        ) from None


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _status_code(exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The status a call failing with ``exc`` ends with (what ``_abort`` will send)."""
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    error = _as_domain_error(exc)
    return error.code if error is not None else grpc.StatusCode.INTERNAL


async def _abort(method: str, context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    error = _as_domain_error(exc)
    if error is None:
        log.exception("unexpected error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        return
    if isinstance(error, UnavailableError) and error is not exc:
        log.warning("database unavailable in %s: %s", method, type(exc).__name__)
    await context.abort_with_status(status_for(error))


__all__ = ["Call", "Dispatcher", "RpcObserver", "rpc", "status_for"]
