"""The async Python SDK: every RPC as a typed method, with calls signed by your key.

    async with Client("127.0.0.1:50051", key=SigningKey.load("me.key")) as client:
        response = await client.register(Role.CONTRIBUTOR, "Ada")

Errors from the server arrive as :class:`ServerError` with the gRPC status code and the
ErrorInfo reason, so callers can branch on ``error.reason``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from coalition import statements
from coalition.auth import CallSigner
from coalition.errors import CoalitionError
from coalition.keys import SigningKey
from coalition.v1 import ledger_pb2, party_pb2

R = TypeVar("R", bound=Message)

LEDGER = "/coalition.v1.LedgerService/"
PARTY = "/coalition.v1.PartyService/"


@dataclass
class ServerError(CoalitionError):
    """The server refused a call: gRPC status code, ErrorInfo reason and message."""

    code: grpc.StatusCode
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"


def _server_error(error: grpc.aio.AioRpcError) -> ServerError:
    reason, metadata = "", {}
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
    return ServerError(error.code(), reason, error.details() or "", metadata)


class Client:
    """A connection to a Coalition server, optionally acting as one party (``key``)."""

    def __init__(
        self,
        target: str,
        key: SigningKey | None = None,
        *,
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.key = key
        self.timeout = timeout
        self._signer = CallSigner(key) if key is not None else None
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.aio.secure_channel(target, credentials)
        else:
            self._channel = grpc.aio.insecure_channel(target)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    def _metadata(self, method: str, raw: bytes, sign: bool) -> tuple[tuple[str, str], ...]:
        if not sign:
            return ()
        if self._signer is None:
            raise CoalitionError("this call needs a key: pass key= to Client")
        return self._signer.metadata(method, raw)

    async def call(self, method: str, request: Message, response_type: type[R], *, sign: bool) -> R:
        """Make one unary call; the request is serialised once and those bytes are signed."""
        raw = request.SerializeToString()
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, R] = self._channel.unary_unary(
            method, response_deserializer=response_type.FromString
        )
        try:
            response: R = await stub(
                raw, metadata=self._metadata(method, raw, sign), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from None
        return response

    # --- ledger (public) -------------------------------------------------------------

    async def log_info(self) -> ledger_pb2.GetLogInfoResponse:
        """Origin and verifier key of the log."""
        return await self.call(
            LEDGER + "GetLogInfo",
            ledger_pb2.GetLogInfoRequest(),
            ledger_pb2.GetLogInfoResponse,
            sign=False,
        )

    async def checkpoint(self) -> ledger_pb2.GetCheckpointResponse:
        """The latest signed checkpoint."""
        return await self.call(
            LEDGER + "GetCheckpoint",
            ledger_pb2.GetCheckpointRequest(),
            ledger_pb2.GetCheckpointResponse,
            sign=False,
        )

    async def entries(
        self, start: int = 0, end: int = 0, page_size: int = 1000
    ) -> AsyncIterator[ledger_pb2.Entry]:
        """Entries from ``start`` to ``end`` (0 = the current tree size), page by page."""
        request = ledger_pb2.ListEntriesRequest(start=start, end=end, page_size=page_size)
        while True:
            response = await self.call(
                LEDGER + "ListEntries", request, ledger_pb2.ListEntriesResponse, sign=False
            )
            for entry in response.entries:
                yield entry
            if not response.next_page_token:
                return
            request = ledger_pb2.ListEntriesRequest(
                end=end, page_size=page_size, page_token=response.next_page_token
            )

    async def entry(self, index: int) -> ledger_pb2.Entry:
        """One entry by index."""
        response = await self.call(
            LEDGER + "GetEntry",
            ledger_pb2.GetEntryRequest(index=index),
            ledger_pb2.GetEntryResponse,
            sign=False,
        )
        return response.entry

    async def inclusion_proof(
        self, index: int, tree_size: int = 0
    ) -> ledger_pb2.GetInclusionProofResponse:
        """Inclusion proof of entry ``index`` (tree_size 0 = latest checkpoint)."""
        return await self.call(
            LEDGER + "GetInclusionProof",
            ledger_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size),
            ledger_pb2.GetInclusionProofResponse,
            sign=False,
        )

    async def consistency_proof(
        self, first_size: int, second_size: int = 0
    ) -> ledger_pb2.GetConsistencyProofResponse:
        """Consistency proof between two sizes (second_size 0 = latest checkpoint)."""
        return await self.call(
            LEDGER + "GetConsistencyProof",
            ledger_pb2.GetConsistencyProofRequest(first_size=first_size, second_size=second_size),
            ledger_pb2.GetConsistencyProofResponse,
            sign=False,
        )

    async def entries_by_subject(
        self, subject_key_id: str = "", kind: str = "", page_size: int = 1000
    ) -> AsyncIterator[ledger_pb2.Entry]:
        """Entries about a party and/or of a kind, in index order."""
        token = ""
        while True:
            response = await self.call(
                LEDGER + "ListEntriesBySubject",
                ledger_pb2.ListEntriesBySubjectRequest(
                    subject_key_id=subject_key_id,
                    kind=kind,
                    page_size=page_size,
                    page_token=token,
                ),
                ledger_pb2.ListEntriesBySubjectResponse,
                sign=False,
            )
            for entry in response.entries:
                yield entry
            token = response.next_page_token
            if not token:
                return

    # --- parties ----------------------------------------------------------------------

    def registration(
        self, role: party_pb2.Role.ValueType, name: str
    ) -> party_pb2.PartyRegistration:
        """A fresh PartyRegistration statement for this client's key."""
        key = self._require_key()
        created = Timestamp()
        created.GetCurrentTime()
        return party_pb2.PartyRegistration(
            role=role,
            name=name,
            signing_key=key.public_key.raw,
            encryption_key=key.encryption_public_key_raw(),
            created_time=created,
            nonce=os.urandom(16),
        )

    async def register(
        self, role: party_pb2.Role.ValueType, name: str, *, request_id: str = ""
    ) -> party_pb2.RegisterPartyResponse:
        """Register this client's key as a party (a ledger append; returns the receipt)."""
        envelope = statements.sign_statement(self.registration(role, name), self._require_key())
        return await self.call(
            PARTY + "RegisterParty",
            party_pb2.RegisterPartyRequest(registration=envelope.to_proto(), request_id=request_id),
            party_pb2.RegisterPartyResponse,
            sign=True,
        )

    async def who_am_i(self) -> party_pb2.Party:
        """This key's registration."""
        response = await self.call(
            PARTY + "WhoAmI", party_pb2.WhoAmIRequest(), party_pb2.WhoAmIResponse, sign=True
        )
        return response.party

    async def party(self, key_id: str) -> party_pb2.Party:
        """A registered party by key id."""
        response = await self.call(
            PARTY + "GetParty",
            party_pb2.GetPartyRequest(key_id=key_id),
            party_pb2.GetPartyResponse,
            sign=False,
        )
        return response.party

    def _require_key(self) -> SigningKey:
        if self.key is None:
            raise CoalitionError("this call needs a key: pass key= to Client")
        return self.key
