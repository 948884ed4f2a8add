"""A small coalition for server tests: raw RPCs, no SDK conveniences in the way."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import grpc

from coalition import hpke
from coalition.auth import CallSigner
from coalition.client import Client, _server_error
from coalition.content import decrypt_all
from coalition.dsse import Envelope
from coalition.keys import SigningKey
from coalition.statements import sign_statement, statement_id
from coalition.v1 import (
    access_pb2,
    consent_pb2,
    items_pb2,
    negotiation_pb2,
    party_pb2,
    strike_pb2,
    terms_pb2,
)
from coalition_server.agreements import conclude_agreement
from coalition_server.server import CoalitionServer

from . import builders

ITEMS = "/coalition.v1.ItemService/"
CONSENT = "/coalition.v1.ConsentService/"
ACCESS = "/coalition.v1.AccessService/"


@dataclass
class Member:
    """A registered contributor."""

    client: Client
    key: SigningKey
    contents: dict[str, bytes] = field(default_factory=dict)

    async def register(self, contents: Sequence[bytes], tags: Sequence[str] = ()) -> list[str]:
        """Register contents as items; return their ids."""
        pairs = [builders.item_registration(self.key, c, tags) for c in contents]
        await self.client.call(
            ITEMS + "RegisterItems",
            items_pb2.RegisterItemsRequest(registrations=[e.to_proto() for _, e in pairs]),
            items_pb2.RegisterItemsResponse,
            sign=True,
        )
        for (item_id, _), content in zip(pairs, contents, strict=True):
            self.contents[item_id] = content
        return [item_id for item_id, _ in pairs]

    async def upload(self, item_id: str, content: bytes | None = None, chunk: int = 7000) -> None:
        """Upload an item's content in chunks."""
        data = self.contents[item_id] if content is None else content
        method = ITEMS + "UploadContent"

        async def messages() -> AsyncIterator[bytes]:
            header = items_pb2.UploadContentRequest(header=items_pb2.UploadHeader(item_id=item_id))
            yield header.SerializeToString()
            for start in range(0, len(data), chunk):
                yield items_pb2.UploadContentRequest(
                    chunk=data[start : start + chunk]
                ).SerializeToString()

        stub: grpc.aio.StreamUnaryMultiCallable[bytes, items_pb2.UploadContentResponse]
        stub = self.client._channel.stream_unary(
            method, response_deserializer=items_pb2.UploadContentResponse.FromString
        )
        try:
            await stub(messages(), metadata=CallSigner(self.key).metadata(method, b""))
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from None

    async def add(self, contents: Sequence[bytes], tags: Sequence[str] = ()) -> list[str]:
        """Register and upload."""
        ids = await self.register(contents, tags)
        for item_id in ids:
            await self.upload(item_id)
        return ids

    async def grant(self, token: consent_pb2.ConsentToken) -> str:
        """Grant one token; return its consent id."""
        envelope = sign_statement(token, self.key)
        await self.client.call(
            CONSENT + "GrantConsent",
            consent_pb2.GrantConsentRequest(tokens=[envelope.to_proto()]),
            consent_pb2.GrantConsentResponse,
            sign=True,
        )
        return statement_id(envelope)

    async def withdraw(self, statement: consent_pb2.Withdrawal) -> consent_pb2.WithdrawResponse:
        """Withdraw."""
        return await self.client.call(
            CONSENT + "Withdraw",
            consent_pb2.WithdrawRequest(withdrawal=sign_statement(statement, self.key).to_proto()),
            consent_pb2.WithdrawResponse,
            sign=True,
        )


@dataclass
class Lab:
    """A registered lab."""

    client: Client
    key: SigningKey

    async def lease(self, agreement_id: str) -> access_pb2.TakeLeaseResponse:
        """Take a lease."""
        envelope = sign_statement(builders.lease_request(agreement_id), self.key)
        return await self.client.call(
            ACCESS + "TakeLease",
            access_pb2.TakeLeaseRequest(lease_request=envelope.to_proto()),
            access_pb2.TakeLeaseResponse,
            sign=True,
        )

    async def fetch(
        self,
        lease_id: str,
        agreement_id: str,
        page_size: int = 0,
        start: str = "",
        pages: int | None = None,
    ) -> tuple[list[access_pb2.FetchRelease], dict[str, bytes]]:
        """Fetch pages (all, or ``pages``) from cursor ``start``; decrypt and check every item.

        Returns (releases, contents).
        """
        releases: list[access_pb2.FetchRelease] = []
        contents: dict[str, bytes] = {}
        token = start
        while pages is None or len(releases) < pages:
            request = access_pb2.FetchRequest(
                lease_id=lease_id, page_size=page_size, page_token=token
            )
            raw = request.SerializeToString()
            method = ACCESS + "Fetch"
            stub: grpc.aio.UnaryStreamMultiCallable[bytes, access_pb2.FetchResponse]
            stub = self.client._channel.unary_stream(
                method, response_deserializer=access_pb2.FetchResponse.FromString
            )
            header: access_pb2.FetchedItem | None = None
            segments: list[bytes] = []
            try:
                async for message in stub(raw, metadata=CallSigner(self.key).metadata(method, raw)):
                    part = message.WhichOneof("part")
                    if part == "release":
                        releases.append(message.release)
                    elif part == "item":
                        header, segments = message.item, []
                    else:
                        assert header is not None
                        segments.append(message.segment)
                        if len(segments) == header.segment_count:
                            contents[header.item_id] = self._open(
                                agreement_id, lease_id, header, segments
                            )
            except grpc.aio.AioRpcError as exc:
                raise _server_error(exc) from None
            token = releases[-1].next_page_token
            if not token:
                break
        return releases, contents

    def _open(
        self,
        agreement_id: str,
        lease_id: str,
        header: access_pb2.FetchedItem,
        segments: list[bytes],
    ) -> bytes:
        data_key = hpke.open_data_key(
            self.key.encryption_private_key(),
            header.sealed_data_key,
            hpke.release_info(agreement_id, lease_id, header.item_id),
        )
        content = decrypt_all(data_key, header.item_id, header.contributor_key_id, segments)
        assert hashlib.sha256(content).digest() == header.commitment
        return content

    async def notices(
        self, since: int = 0, count: int = 1, wait: float = 10.0
    ) -> list[access_pb2.WatchWithdrawalsResponse]:
        """Read ``count`` notices from the feed."""
        request = access_pb2.WatchWithdrawalsRequest(since_index=since)
        raw = request.SerializeToString()
        method = ACCESS + "WatchWithdrawals"
        stub: grpc.aio.UnaryStreamMultiCallable[bytes, access_pb2.WatchWithdrawalsResponse]
        stub = self.client._channel.unary_stream(
            method, response_deserializer=access_pb2.WatchWithdrawalsResponse.FromString
        )
        call = stub(raw, metadata=CallSigner(self.key).metadata(method, raw), timeout=wait)
        received = []
        try:
            async for message in call:
                received.append(message)
                if len(received) == count:
                    break
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from None
        finally:
            call.cancel()
        return received

    async def acknowledge(
        self, notice_id: str, item_ids: Sequence[str]
    ) -> access_pb2.AcknowledgeWithdrawalResponse:
        """Send a deletion receipt."""
        envelope = sign_statement(builders.deletion_receipt(notice_id, item_ids), self.key)
        return await self.client.call(
            ACCESS + "AcknowledgeWithdrawal",
            access_pb2.AcknowledgeWithdrawalRequest(receipt=envelope.to_proto()),
            access_pb2.AcknowledgeWithdrawalResponse,
            sign=True,
        )


async def member(make_client: Callable[..., Client], name: str = "member") -> Member:
    """A registered contributor."""
    key = SigningKey.generate()
    client = make_client(key)
    await client.register(party_pb2.ROLE_CONTRIBUTOR, name)
    return Member(client, key)


async def lab(make_client: Callable[..., Client], name: str = "lab") -> Lab:
    """A registered lab."""
    key = SigningKey.generate()
    client = make_client(key)
    await client.register(party_pb2.ROLE_LAB, name)
    return Lab(client, key)


async def agree(
    server: CoalitionServer, lab_: Lab, item_ids: Sequence[str], **terms: object
) -> str:
    """Conclude an agreement for ``item_ids``; return its id."""
    envelope: Envelope = builders.agreement(
        lab_.key,
        item_ids,
        builders.licence_terms(**terms) if terms else None,  # type: ignore[arg-type]
    )
    agreement_id, _ = await conclude_agreement(server.context, server.parties, envelope)
    return agreement_id


NEGOTIATION = "/coalition.v1.NegotiationService/"


async def open_negotiation(
    lab_: Lab, terms: terms_pb2.LicenceTerms
) -> negotiation_pb2.OpenNegotiationResponse:
    """The lab opens a negotiation with ``terms``."""
    statement = negotiation_pb2.NegotiationRequest(
        terms=terms, created_time=builders.ts(builders.now()), nonce=os.urandom(16)
    )
    return await lab_.client.call(
        NEGOTIATION + "OpenNegotiation",
        negotiation_pb2.OpenNegotiationRequest(
            request=sign_statement(statement, lab_.key).to_proto()
        ),
        negotiation_pb2.OpenNegotiationResponse,
        sign=True,
    )


async def move(
    lab_: Lab,
    negotiation_id: str,
    round_: int,
    kind: negotiation_pb2.MoveKind.ValueType,
    terms: terms_pb2.LicenceTerms | None = None,
) -> negotiation_pb2.MoveResponse:
    """The lab's move in round ``round_``."""
    statement = negotiation_pb2.NegotiationMove(
        negotiation_id=negotiation_id,
        round=round_,
        kind=kind,
        created_time=builders.ts(builders.now()),
        nonce=os.urandom(16),
    )
    if terms is not None:
        statement.terms.CopyFrom(terms)
    return await lab_.client.call(
        NEGOTIATION + "Move",
        negotiation_pb2.MoveRequest(move=sign_statement(statement, lab_.key).to_proto()),
        negotiation_pb2.MoveResponse,
        sign=True,
    )


async def sign_agreement(lab_: Lab, draft: bytes) -> negotiation_pb2.SignAgreementResponse:
    """The lab signs the drafted agreement as drafted."""
    statement = access_pb2.Agreement.FromString(draft)
    envelope = sign_statement(statement, lab_.key)
    assert envelope.payload == draft
    return await lab_.client.call(
        NEGOTIATION + "SignAgreement",
        negotiation_pb2.SignAgreementRequest(agreement=envelope.to_proto()),
        negotiation_pb2.SignAgreementResponse,
        sign=True,
    )


STRIKE = "/coalition.v1.StrikeService/"


async def pledge(
    m: Member, target: str, min_members: int = 0, min_share_bp: int = 0, days: float = 7
) -> strike_pb2.PledgeResponse:
    """The member pledges to strike against ``target`` ("" = every lab)."""
    statement = strike_pb2.StrikePledge(
        target_lab_key_id=target,
        min_members=min_members,
        min_share_basis_points=min_share_bp,
        expiry_time=builders.ts(builders.now() + timedelta(days=days)),
        created_time=builders.ts(builders.now()),
        nonce=os.urandom(16),
    )
    return await m.client.call(
        STRIKE + "Pledge",
        strike_pb2.PledgeRequest(pledge=sign_statement(statement, m.key).to_proto()),
        strike_pb2.PledgeResponse,
        sign=True,
    )
