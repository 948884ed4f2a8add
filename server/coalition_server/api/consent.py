"""ConsentService: grant, list, prove, withdraw and export consent."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from coalition import statements
from coalition.v1 import consent_pb2, ledger_pb2, party_pb2
from coalition_server.api.auth import Policy
from coalition_server.api.dispatch import Call, Encoded, rpc
from coalition_server.api.mutations import (
    idempotency_key,
    open_batch,
    signed_statement,
)
from coalition_server.context import ServerContext
from coalition_server.domain import consent as rules
from coalition_server.domain import exports
from coalition_server.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from coalition_server.domain.pagination import decode_token, encode_token, page_size
from coalition_server.domain.statements import HEX_ID
from coalition_server.store import consent as store
from coalition_server.store import withdrawal as withdrawals
from coalition_server.store.ledger import LedgerStore
from coalition_server.store.sequencer import (
    Group,
    GroupContext,
    Receipts,
    RunRequest,
    Submission,
    length_delimited,
    varint,
)
from coalition_server.store.withdrawal import WithdrawalOutcome, WithdrawalRequest
from coalition_server.timeutil import utcnow

CONTRIBUTOR = party_pb2.ROLE_CONTRIBUTOR
MAX_TOKENS_PER_REQUEST = 1000


def _check_consent_id(consent_id: str) -> None:
    if not HEX_ID.match(consent_id):
        raise InvalidArgumentError("BAD_CONSENT_ID", "consent ids are 32 lowercase hex")


class ConsentServicer:
    """Members' consent."""

    def __init__(self, context: ServerContext, ledger: LedgerStore) -> None:
        self._ctx = context
        self._ledger = ledger

    @rpc(Policy.PARTY)
    async def GrantConsent(self, request: consent_pb2.GrantConsentRequest, call: Call) -> Encoded:
        party = call.require_role(CONTRIBUTOR)
        key = idempotency_key(request, call)
        if not 1 <= len(request.tokens) <= MAX_TOKENS_PER_REQUEST:
            raise InvalidArgumentError("BAD_BATCH", "send 1 to 1000 tokens")
        now = utcnow()
        valid: set[bytes] = set()  # floors and norms found valid, for the request's threads
        opened = await open_batch(
            request.tokens,
            "tokens",
            consent_pb2.ConsentToken,
            call,
            lambda statement: rules.check_token(statement, self._ctx.currency, now, valid),
        )
        member = _record_member(party.key_id)
        records: list[bytes] = []
        tokens: list[_Granted] = []
        submissions = []
        for message, (envelope, statement) in zip(request.tokens, opened, strict=True):
            # Exactly envelope.to_proto() (the fields a DSSE envelope has): the request's own
            # message, encoded in C, rather than the envelope rebuilt field by field. The
            # ledger leaf and the record embed it.
            message.DiscardUnknownFields()
            encoded = message.SerializeToString(deterministic=True)
            submission = Submission(envelope, party.key_id, encoded=encoded)
            # statements.statement_id, from the hash the sequencer needs anyway.
            consent_id = submission.statement_hash.hex()[:32]
            records.append(_record_head(consent_id, member, encoded))
            # What recording the token needs, read from it here rather than in the sequencer's
            # transaction. The payload is the statement's canonical encoding (open_statement
            # refuses any other), so it is stored as is rather than serialised again.
            not_before, not_after = rules.validity(statement)
            tokens.append(
                (
                    consent_id,
                    envelope.payload,
                    not_before,
                    not_after,
                    bytes(statement.nonce),
                    tuple(rules.named_items(statement)),
                )
            )
            submissions.append(submission)
        # The statements are read: free them now rather than hold them for the batch (a
        # thousand tracked objects surviving into the oldest generation).
        del opened
        effect = _GrantAll(party.key_id, tokens)

        def respond(receipts: Sequence[ledger_pb2.Receipt]) -> bytes:
            return _grant_response(records, receipts)

        result = await self._ctx.sequencer.submit(Group(tuple(submissions), respond, key, effect))
        # Sent as the sequencer's bytes: parsing them into a message only for dispatch to
        # serialise it again cost milliseconds per thousand receipts.
        return Encoded(result.response)

    @rpc(Policy.PARTY)
    async def ListConsents(
        self, request: consent_pb2.ListConsentsRequest, call: Call
    ) -> consent_pb2.ListConsentsResponse:
        party = call.require_role(CONTRIBUTOR)
        start = decode_token(request.page_token) if request.page_token else 0
        size = page_size(request.page_size)
        now = utcnow()
        async with self._ctx.database.reader.connect() as conn:
            entries = await store.member_consents(
                conn, party.key_id, start_index=start, limit=size + 1
            )
        records = []
        for entry in entries[:size]:
            # The signed envelope (with its signatures) lives in the ledger leaf.
            stored = await self._ledger.entry(index=entry.index)
            records.append(_record(entry, stored.leaf, now))
        more = len(entries) > size
        token = encode_token(entries[size - 1].index + 1) if more else ""
        return consent_pb2.ListConsentsResponse(consents=records, next_page_token=token)

    @rpc(Policy.PUBLIC)
    async def GetConsentState(
        self, request: consent_pb2.GetConsentStateRequest, call: Call
    ) -> consent_pb2.GetConsentStateResponse:
        _check_consent_id(request.consent_id)
        async with self._ctx.database.reader.connect() as conn:
            entry = await store.consent(conn, request.consent_id)
        if entry is None:
            raise NotFoundError("CONSENT_NOT_FOUND", "no such consent token")
        # Proofs against the latest checkpoint, so the state can be checked offline.
        size, proof, latest = await self._ledger.inclusion_proof(entry.index, 0)
        token_leaf = await self._ledger.entry(index=entry.index)
        response = consent_pb2.GetConsentStateResponse(
            state=consent_pb2.ConsentState.ValueType(entry.state_at(utcnow())),
            token_entry=consent_pb2.InclusionEvidence(
                index=entry.index, leaf=token_leaf.leaf, proof=proof
            ),
            checkpoint=latest.note,
        )
        if entry.withdrawal_index is not None and entry.withdrawal_index < size:
            _, withdrawal_proof, _ = await self._ledger.inclusion_proof(
                entry.withdrawal_index, size
            )
            withdrawal_leaf = await self._ledger.entry(index=entry.withdrawal_index)
            response.withdrawal_entry.CopyFrom(
                consent_pb2.InclusionEvidence(
                    index=entry.withdrawal_index,
                    leaf=withdrawal_leaf.leaf,
                    proof=withdrawal_proof,
                )
            )
        return response

    @rpc(Policy.PARTY)
    async def Withdraw(self, request: consent_pb2.WithdrawRequest, call: Call) -> Encoded:
        party = call.require_role(CONTRIBUTOR)
        key = idempotency_key(request, call)
        envelope, statement = signed_statement(request, "withdrawal", consent_pb2.Withdrawal, call)
        _check_withdrawal_scope(statement)
        outcome = WithdrawalOutcome()
        withdrawal = WithdrawalRequest(
            member=party.key_id,
            withdrawal_id=statements.statement_id(envelope),
            statement=statement,
            coalition_key=self._ctx.coalition_key,
            outcome=outcome,
        )

        def respond(receipts: Sequence[ledger_pb2.Receipt]) -> bytes:
            return consent_pb2.WithdrawResponse(
                receipt=receipts[0],
                shredded_item_ids=outcome.shredded_item_ids,
                notified_labs=len(outcome.notified_labs),
            ).SerializeToString()

        # Withdrawals queued together are decided together (decision 35).
        run = RunRequest(withdrawals.decide_run, withdrawal)
        result = await self._ctx.sequencer.submit(
            Group((Submission(envelope, party.key_id),), respond, key, run=run)
        )
        return Encoded(result.response)

    @rpc(Policy.PARTY)
    async def ExportConsent(
        self, request: consent_pb2.ExportConsentRequest, call: Call
    ) -> consent_pb2.ExportConsentResponse:
        party = call.require_role(CONTRIBUTOR)
        _check_consent_id(request.consent_id)
        async with self._ctx.database.reader.connect() as conn:
            entry = await store.consent(conn, request.consent_id)
        if entry is None:
            raise NotFoundError("CONSENT_NOT_FOUND", "no such consent token")
        if entry.token.contributor_key_id != party.key_id:
            raise PermissionDeniedError("NOT_YOUR_CONSENT", "that token is another member's")
        token = entry.token
        if request.format == consent_pb2.EXPORT_FORMAT_ODRL:
            policy = exports.consent_to_odrl(
                token.consent_id, party.key_id, token.statement, sequenced_at=token.not_before
            )
            return consent_pb2.ExportConsentResponse(
                media_type="application/ld+json", document=json.dumps(policy, indent=2)
            )
        if request.format == consent_pb2.EXPORT_FORMAT_RSL:
            document = exports.consent_to_rsl(token.consent_id, party.key_id, token.statement)
            return consent_pb2.ExportConsentResponse(
                media_type="application/rsl+xml", document=document
            )
        raise InvalidArgumentError("BAD_FORMAT", "format must be ODRL or RSL")


def _check_withdrawal_scope(statement: consent_pb2.Withdrawal) -> None:
    scope = statement.WhichOneof("scope")
    if scope is None or (scope == "everything" and not statement.everything):
        raise InvalidArgumentError("MISSING_SCOPE", "withdraw a consent_id, items or everything")
    if scope == "consent_id":
        _check_consent_id(statement.consent_id)
    if scope == "items":
        ids = list(statement.items.item_ids)
        if not 1 <= len(ids) <= rules.MAX_ITEMS_PER_TOKEN or len(set(ids)) != len(ids):
            raise InvalidArgumentError("BAD_ITEMS", "name 1 to 10000 distinct item ids")
        for item_id in ids:
            if not HEX_ID.match(item_id):
                raise InvalidArgumentError("BAD_ITEM_ID", "item ids are 32 lowercase hex")


def _record(entry: store.ConsentEntry, leaf: bytes, now: datetime) -> consent_pb2.ConsentRecord:
    envelope = ledger_pb2.LedgerLeaf.FromString(leaf).envelope
    return consent_pb2.ConsentRecord(
        consent_id=entry.token.consent_id,
        contributor_key_id=entry.token.contributor_key_id,
        token=envelope,
        state=consent_pb2.ConsentState.ValueType(entry.state_at(now)),
        index=entry.index,
        withdrawal_index=entry.withdrawal_index or 0,
    )


_Granted = tuple[str, bytes, datetime | None, datetime, bytes, tuple[str, ...]]
"""A verified token of a GrantConsent request, with what recording it needs: its id, signed
payload, window (:func:`rules.validity`), nonce and named items. A plain tuple of plain
values, which the garbage collector stops tracking (a thousand objects per request that
live through the batch would otherwise bring on its full collections sooner)."""


class _GrantAll:
    """Records a request's tokens in bulk."""

    def __init__(self, member: str, tokens: list[_Granted]) -> None:
        self._member = member
        self._tokens = tokens

    async def __call__(self, ctx: GroupContext) -> None:
        at = ctx.integrated_time
        member = self._member
        grants = []
        for (consent_id, payload, not_before, not_after, nonce, _), index in zip(
            self._tokens, ctx.indices, strict=True
        ):
            if not_after <= at:
                raise FailedPreconditionError("TOKEN_EXPIRED", "the token lapsed before sequencing")
            grants.append(
                store.Grant(
                    consent_id,
                    member,
                    index,
                    payload,
                    rules.GIVEN,
                    # As rules.parse_token: a token without not_before starts when sequenced.
                    at if not_before is None else not_before,
                    not_after,
                    nonce,
                )
            )
        await store.record_grants(ctx.conn, grants, [item_ids for *_, item_ids in self._tokens])


# GrantConsentResponse is encoded here, not built as messages: copying a thousand records and
# receipts into one message cost more than encoding them. These are its fields' numbers (a
# test compares the bytes with protobuf's own encoding).
_RESPONSE_CONSENTS, _RESPONSE_RECEIPTS = 1, 2
_RECORD_ID, _RECORD_MEMBER, _RECORD_TOKEN = 1, 2, 3
_RECORD_GIVEN = varint(4 << 3) + varint(consent_pb2.CONSENT_STATE_GIVEN)
_RECORD_INDEX = varint(5 << 3)


def _record_member(member: str) -> bytes:
    """A ConsentRecord's contributor_key_id field (the same in every record of a request)."""
    return length_delimited(_RECORD_MEMBER, member.encode())


def _record_head(consent_id: str, member: bytes, token: bytes) -> bytes:
    """A GIVEN ConsentRecord without its index (which the sequencer gives it): the fields
    before the index, in field order. ``member`` is :func:`_record_member`'s, ``token`` the
    envelope's encoding."""
    return (
        length_delimited(_RECORD_ID, consent_id.encode())
        + member
        + length_delimited(_RECORD_TOKEN, token)
        + _RECORD_GIVEN
    )


def _grant_response(heads: Sequence[bytes], receipts: Sequence[ledger_pb2.Receipt]) -> bytes:
    """The serialised GrantConsentResponse: each record (completed with its receipt's index),
    then each receipt (as the sequencer encoded it)."""
    if isinstance(receipts, Receipts):
        indices, encoded = receipts.indices, receipts.encoded
    else:
        indices = tuple(receipt.index for receipt in receipts)
        encoded = tuple(receipt.SerializeToString() for receipt in receipts)
    parts = [
        length_delimited(
            _RESPONSE_CONSENTS, head + _RECORD_INDEX + varint(index) if index else head
        )
        for head, index in zip(heads, indices, strict=True)
    ]
    parts.extend(length_delimited(_RESPONSE_RECEIPTS, receipt) for receipt in encoded)
    return b"".join(parts)
