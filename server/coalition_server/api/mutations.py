"""Shared handling of mutations: request_id validation and idempotency keys."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from google.protobuf.message import Message

from coalition import dsse
from coalition.errors import CoalitionError
from coalition.v1 import envelope_pb2
from coalition_server.api.dispatch import Call
from coalition_server.domain.errors import InvalidArgumentError, ResourceExhaustedError
from coalition_server.domain.statements import check_fresh, check_nonce, open_statement
from coalition_server.store.sequencer import IdempotencyKey
from coalition_server.timeutil import utcnow

M = TypeVar("M", bound=Message)

# Below this many statements a batch is opened on the event loop: threads would cost more.
PARALLEL_BATCH = 64
# Threads opening batches: one per core (Ed25519 verification releases the GIL), shared by
# every request so that batches are opened in arrival order, each on every core.
VERIFY_THREADS = max(1, min(os.cpu_count() or 1, 8))
_verifiers: ThreadPoolExecutor | None = None
_verifiers_lock = threading.Lock()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_PAYLOAD_BYTES = 64 * 1024


def idempotency_key(request: Message, call: Call) -> IdempotencyKey | None:
    """The idempotency key of a mutation, or None when it has no request_id."""
    request_id: str = getattr(request, "request_id")  # noqa: B009 - every mutation has one
    if not request_id:
        return None
    if not _REQUEST_ID.match(request_id):
        raise InvalidArgumentError(
            "BAD_REQUEST_ID", "request_id must be 1 to 64 characters of [A-Za-z0-9._:-]"
        )
    stripped = type(request)()
    stripped.CopyFrom(request)
    stripped.ClearField("request_id")
    digest = hashlib.sha256(stripped.SerializeToString(deterministic=True)).digest()
    return IdempotencyKey(call.require_caller().key_id, request_id, call.method, digest)


def decode_envelope(message: envelope_pb2.Envelope, field: str) -> dsse.Envelope:
    """A DSSE envelope from the request, or INVALID_ARGUMENT naming the field."""
    if len(message.payload) > MAX_PAYLOAD_BYTES:
        raise ResourceExhaustedError(
            "PAYLOAD_TOO_LARGE", f"{field}: statements are at most {MAX_PAYLOAD_BYTES} bytes"
        )
    try:
        return dsse.Envelope.from_proto(message)
    except CoalitionError as exc:
        raise InvalidArgumentError("MALFORMED_ENVELOPE", f"{field}: {exc}") from None


def signed_statement(
    request: Message, field: str, cls: type[M], call: Call
) -> tuple[dsse.Envelope, M]:
    """The statement in ``request.<field>``: present, well formed, signed by the caller alone,
    fresh (when it has a created_time) and with a proper nonce (when it has one)."""
    if not request.HasField(field):
        raise InvalidArgumentError("MISSING_FIELD", f"{field} is required")
    envelope = decode_envelope(getattr(request, field), field)
    statement = open_statement(envelope, cls, call.require_caller().public_key)
    fields = cls.DESCRIPTOR.fields_by_name
    if "created_time" in fields:
        check_fresh(
            getattr(statement, "created_time"),  # noqa: B009 - known to exist
            statement.HasField("created_time"),
            utcnow(),
        )
    if "nonce" in fields:
        check_nonce(getattr(statement, "nonce"))  # noqa: B009 - known to exist
    return envelope, statement


def _verify_pool() -> ThreadPoolExecutor:
    """The process's pool of batch-opening threads (started on first use)."""
    global _verifiers
    with _verifiers_lock:
        if _verifiers is None:
            _verifiers = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="verify")
        return _verifiers


async def open_batch(
    messages: Sequence[envelope_pb2.Envelope],
    field: str,
    cls: type[M],
    call: Call,
    check: Callable[[M], None],
) -> list[tuple[dsse.Envelope, M]]:
    """Decode, verify (caller's signature) and ``check`` each statement of a batch request.

    A large batch is split across worker threads: Ed25519 verification releases the GIL, so
    every core verifies. The error raised is the one at the lowest position, exactly as a
    loop over the batch would raise it.

    The threads are a pool of their own, one per core, rather than the event loop's default
    executor: with several large requests in flight, each request's ranges then run in turn
    on every core (the oldest request is ready for the sequencer first) instead of all of
    them interleaving on more threads than cores, contending for the GIL.
    """
    signer = call.require_caller().public_key

    def open_range(start: int, stop: int) -> list[tuple[dsse.Envelope, M]]:
        opened = []
        for position in range(start, stop):
            envelope = decode_envelope(messages[position], f"{field}[{position}]")
            statement = open_statement(envelope, cls, signer)
            check(statement)
            opened.append((envelope, statement))
        return opened

    if len(messages) < PARALLEL_BATCH:
        return open_range(0, len(messages))
    size = -(-len(messages) // VERIFY_THREADS)
    bounds = [(start, min(start + size, len(messages))) for start in range(0, len(messages), size)]
    loop = asyncio.get_running_loop()
    pool = _verify_pool()
    results = await asyncio.gather(
        *(
            # As asyncio.to_thread does: the range runs in a copy of the caller's context.
            loop.run_in_executor(pool, contextvars.copy_context().run, open_range, start, stop)
            for start, stop in bounds
        ),
        return_exceptions=True,
    )
    opened: list[tuple[dsse.Envelope, M]] = []
    for result in results:  # in position order: the first failing range holds the first error
        if isinstance(result, BaseException):
            raise result
        opened.extend(result)
    return opened
