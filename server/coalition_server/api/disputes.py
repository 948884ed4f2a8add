"""DisputeService: covered members allege a breach of an agreement's declaration; its lab
answers.

Both are signed statements logged in the ledger. Who may file (a member the agreement
covers) and who may answer (the agreement's lab, once) is checked inside the sequencing
transaction that logs the statement, so a refused call writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from coalition import dsse, statements
from coalition.v1 import disputes_pb2, party_pb2
from coalition_server.api.auth import Policy
from coalition_server.api.dispatch import Call, Encoded, rpc
from coalition_server.api.mutations import idempotency_key, signed_statement
from coalition_server.context import ServerContext
from coalition_server.domain import disputes as rules
from coalition_server.domain.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from coalition_server.domain.pagination import decode_token, encode_token, page_size
from coalition_server.domain.statements import HEX_ID, check_key_id
from coalition_server.store import access as agreements
from coalition_server.store import disputes as store
from coalition_server.store.sequencer import EffectContext, Group, Submission

CONTRIBUTOR = party_pb2.ROLE_CONTRIBUTOR
LAB = party_pb2.ROLE_LAB


def _serialised(envelope: dsse.Envelope) -> bytes:
    return envelope.to_proto().SerializeToString(deterministic=True)


class DisputeServicer:
    """Disputes about agreements, and labs' responses."""

    def __init__(self, context: ServerContext) -> None:
        self._ctx = context

    @rpc(Policy.PARTY)
    async def FileDispute(self, request: disputes_pb2.FileDisputeRequest, call: Call) -> Encoded:
        member = call.require_role(CONTRIBUTOR)
        key = idempotency_key(request, call)
        envelope, statement = signed_statement(request, "dispute", disputes_pb2.Dispute, call)
        rules.check_dispute(statement)
        # The lab is a subject of the entry (its disputes are found by its key id); an
        # agreement never changes once logged, so reading it here is as good as inside.
        async with self._ctx.database.reader.connect() as conn:
            agreement = await agreements.agreement(conn, statement.agreement_id)
        if agreement is None:
            raise NotFoundError("AGREEMENT_NOT_FOUND", "no such agreement")
        dispute_id = statements.statement_id(envelope)
        effect = _FileEffect(dispute_id, member.key_id, statement, _serialised(envelope))
        subjects = (statement.agreement_id, agreement.lab_key_id)
        result = await self._ctx.sequencer.submit(
            Group(
                (Submission(envelope, member.key_id, subjects, effect),),
                lambda receipts: disputes_pb2.FileDisputeResponse(
                    dispute_id=dispute_id, receipt=receipts[0]
                ).SerializeToString(),
                key,
            )
        )
        return Encoded(result.response)

    @rpc(Policy.PARTY)
    async def RespondToDispute(
        self, request: disputes_pb2.RespondToDisputeRequest, call: Call
    ) -> Encoded:
        lab = call.require_role(LAB)
        key = idempotency_key(request, call)
        envelope, statement = signed_statement(
            request, "response", disputes_pb2.DisputeResponse, call
        )
        rules.check_response(statement)
        async with self._ctx.database.reader.connect() as conn:
            found = await store.dispute(conn, statement.dispute_id)
        if found is None:
            raise NotFoundError("DISPUTE_NOT_FOUND", "no such dispute")
        effect = _RespondEffect(statement.dispute_id, lab.key_id, _serialised(envelope))
        subjects = (statement.dispute_id, found.agreement_id, found.member_key_id)
        result = await self._ctx.sequencer.submit(
            Group(
                (Submission(envelope, lab.key_id, subjects, effect),),
                lambda receipts: disputes_pb2.RespondToDisputeResponse(
                    receipt=receipts[0]
                ).SerializeToString(),
                key,
            )
        )
        return Encoded(result.response)

    @rpc(Policy.PUBLIC)
    async def ListDisputes(
        self, request: disputes_pb2.ListDisputesRequest, call: Call
    ) -> disputes_pb2.ListDisputesResponse:
        # Public, like the ledger that holds every dispute and response anyway.
        if request.agreement_id and not HEX_ID.match(request.agreement_id):
            raise InvalidArgumentError("BAD_AGREEMENT_ID", "agreement ids are 32 lowercase hex")
        if request.lab_key_id:
            check_key_id(request.lab_key_id, "lab_key_id")
        if request.member_key_id:
            check_key_id(request.member_key_id, "member_key_id")
        start = decode_token(request.page_token) if request.page_token else 0
        size = page_size(request.page_size)
        async with self._ctx.database.reader.connect() as conn:
            entries = await store.disputes(
                conn,
                start,
                size + 1,
                agreement_id=request.agreement_id,
                lab_key_id=request.lab_key_id,
                member_key_id=request.member_key_id,
            )
        token = encode_token(entries[size - 1].index + 1) if len(entries) > size else ""
        return disputes_pb2.ListDisputesResponse(
            disputes=[e.to_proto() for e in entries[:size]], next_page_token=token
        )

    @rpc(Policy.PUBLIC)
    async def GetDispute(
        self, request: disputes_pb2.GetDisputeRequest, call: Call
    ) -> disputes_pb2.GetDisputeResponse:
        rules.check_dispute_id(request.dispute_id)
        async with self._ctx.database.reader.connect() as conn:
            found = await store.dispute(conn, request.dispute_id)
        if found is None:
            raise NotFoundError("DISPUTE_NOT_FOUND", "no such dispute")
        return disputes_pb2.GetDisputeResponse(dispute=found.to_proto())


@dataclass(frozen=True)
class _FileEffect:
    """Only a member the agreement covers may dispute it."""

    dispute_id: str
    member: str
    statement: disputes_pb2.Dispute
    envelope: bytes

    async def __call__(self, ctx: EffectContext) -> None:
        agreement = await agreements.agreement(ctx.conn, self.statement.agreement_id)
        if agreement is None:
            raise NotFoundError("AGREEMENT_NOT_FOUND", "no such agreement")
        if not await store.covers_member(ctx.conn, agreement.agreement_id, self.member):
            raise PermissionDeniedError(
                "NOT_COVERED", "only members whose items the agreement covers may dispute it"
            )
        await store.insert_dispute(
            ctx.conn,
            store.DisputeEntry(
                dispute_id=self.dispute_id,
                agreement_id=agreement.agreement_id,
                lab_key_id=agreement.lab_key_id,
                member_key_id=self.member,
                index=ctx.index,
                filed_at=ctx.integrated_time,
                envelope=self.envelope,
            ),
        )


@dataclass(frozen=True)
class _RespondEffect:
    """Only the disputed agreement's lab answers, and only once."""

    dispute_id: str
    lab: str
    envelope: bytes

    async def __call__(self, ctx: EffectContext) -> None:
        found = await store.dispute(ctx.conn, self.dispute_id)
        if found is None:
            raise NotFoundError("DISPUTE_NOT_FOUND", "no such dispute")
        if found.lab_key_id != self.lab:
            raise PermissionDeniedError(
                "NOT_YOUR_AGREEMENT", "that dispute is about another lab's agreement"
            )
        if found.response_index is not None:
            raise AlreadyExistsError(
                "DISPUTE_ANSWERED",
                f"that dispute was answered at entry {found.response_index}",
                {"response_index": str(found.response_index)},
            )
        await store.record_response(
            ctx.conn, self.dispute_id, ctx.index, ctx.integrated_time, self.envelope
        )
