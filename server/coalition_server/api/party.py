"""PartyService: registration and lookup of parties' keys."""

from __future__ import annotations

from coalition.v1 import ledger_pb2, party_pb2
from coalition_server.api.auth import Policy
from coalition_server.api.dispatch import Call, Encoded, rpc
from coalition_server.api.mutations import decode_envelope, idempotency_key
from coalition_server.domain.errors import InvalidArgumentError, NotFoundError
from coalition_server.domain.parties import check_registration
from coalition_server.store.parties import PartyRecord, PartyStore, insert_party
from coalition_server.store.sequencer import EffectContext, Sequencer, Submission
from coalition_server.timeutil import utcnow


class PartyServicer:
    """Registers parties (a ledger append) and looks them up."""

    def __init__(self, parties: PartyStore, sequencer: Sequencer) -> None:
        self._parties = parties
        self._sequencer = sequencer

    @rpc(Policy.SIGNED)
    async def RegisterParty(self, request: party_pb2.RegisterPartyRequest, call: Call) -> Encoded:
        caller = call.require_caller()
        key = idempotency_key(request, call)
        if not request.HasField("registration"):
            raise InvalidArgumentError("MISSING_FIELD", "registration is required")
        envelope = decode_envelope(request.registration, "registration")
        registration = check_registration(envelope, caller.key_id, utcnow())

        def record(index: int) -> PartyRecord:
            return PartyRecord(
                key_id=caller.key_id,
                role=registration.role,
                name=registration.name,
                signing_key=bytes(registration.signing_key),
                encryption_key=bytes(registration.encryption_key),
                registration_index=index,
            )

        async def effect(context: EffectContext) -> None:
            await insert_party(context.conn, record(context.index))

        def respond(receipt: ledger_pb2.Receipt) -> bytes:
            return party_pb2.RegisterPartyResponse(
                party=record(receipt.index).to_proto(), receipt=receipt
            ).SerializeToString()

        result = await self._sequencer.submit_one(
            Submission(envelope=envelope, signer_key_id=caller.key_id, effect=effect),
            respond,
            key,
        )
        return Encoded(result.response)

    @rpc(Policy.PUBLIC)
    async def GetParty(
        self, request: party_pb2.GetPartyRequest, call: Call
    ) -> party_pb2.GetPartyResponse:
        if len(request.key_id) != 64:
            raise InvalidArgumentError("BAD_KEY_ID", "key_id is 64 hex characters")
        party = await self._parties.get(request.key_id)
        if party is None:
            raise NotFoundError("PARTY_NOT_FOUND", "no party has this key id")
        return party_pb2.GetPartyResponse(party=party.to_proto())

    @rpc(Policy.PARTY)
    async def WhoAmI(
        self, request: party_pb2.WhoAmIRequest, call: Call
    ) -> party_pb2.WhoAmIResponse:
        return party_pb2.WhoAmIResponse(party=call.require_caller().require_party().to_proto())
