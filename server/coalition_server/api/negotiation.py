"""NegotiationService: the catalogue and negotiations between a lab and the coalition.

The coalition's answer to every lab move is decided inside the same sequencing transaction
as the move, from the consent in force at that point of the ledger, and logged right after
it: the lab gets the answer in the response, and nobody can slip a move in between.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from coalition import dsse, merkle, norms, statements
from coalition.v1 import (
    access_pb2,
    envelope_pb2,
    ledger_pb2,
    negotiation_pb2,
    party_pb2,
    terms_pb2,
)
from coalition_server import deals
from coalition_server.agreements import item_ids_root
from coalition_server.api.auth import Policy
from coalition_server.api.dispatch import Call, Encoded, rpc
from coalition_server.api.mutations import decode_envelope, idempotency_key, signed_statement
from coalition_server.context import ServerContext
from coalition_server.domain import bargaining, disputes, reservation, supply
from coalition_server.domain import catalogue as pool_catalogue
from coalition_server.domain import negotiation as machine
from coalition_server.domain.consent import check_declaration, duration
from coalition_server.domain.errors import (
    DomainError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from coalition_server.domain.pagination import decode_token, encode_token, page_size
from coalition_server.domain.statements import (
    HEX_ID,
    open_statement,
)
from coalition_server.store import items as items_store
from coalition_server.store import negotiation as store
from coalition_server.store.ledger import LedgerStore
from coalition_server.store.pool import Pool
from coalition_server.store.sequencer import (
    EffectContext,
    Group,
    Receipts,
    RunContext,
    RunRequest,
    Submission,
    length_delimited,
)
from coalition_server.timeutil import to_timestamp, utcnow

LAB = party_pb2.ROLE_LAB
CONTRIBUTOR = party_pb2.ROLE_CONTRIBUTOR


def _check_negotiation_id(value: str) -> None:
    if not HEX_ID.match(value):
        raise InvalidArgumentError("BAD_NEGOTIATION_ID", "negotiation ids are 32 lowercase hex")


class NegotiationServicer:
    """Labs negotiate with the coalition as a whole."""

    def __init__(self, context: ServerContext) -> None:
        self._ctx = context

    # --- the catalogue -------------------------------------------------------------------

    @rpc(Policy.PUBLIC)
    async def GetCatalogue(
        self, request: negotiation_pb2.GetCatalogueRequest, call: Call
    ) -> negotiation_pb2.GetCatalogueResponse:
        minimum = self._ctx.policy.catalogue.minimum_group_size
        async with self._ctx.database.reader.connect() as conn:
            pool = await self._ctx.pools.load(conn)
        now = utcnow()
        rows = pool_catalogue.catalogue(pool.items, pool.tokens, now, minimum)
        vocabulary = norms.Vocabulary.load()
        shares = pool_catalogue.norm_shares(pool.items, pool.tokens, now, minimum, vocabulary)
        return negotiation_pb2.GetCatalogueResponse(
            rows=[
                negotiation_pb2.CatalogueRow(
                    purpose=terms_pb2.Purpose.ValueType(row.purpose),
                    payment_model=terms_pb2.PaymentModel.ValueType(row.payment_model),
                    member_count=row.member_count,
                    item_count=row.item_count,
                    floor_quantiles_micros=row.floor_quantiles_micros,
                )
                for row in rows
            ],
            minimum_group_size=minimum,
            currency_code=self._ctx.currency,
            norm_shares=[
                negotiation_pb2.NormShare(
                    norm_id=share.norm_id,
                    hard=_share_group(share.hard),
                    priced=_share_group(share.priced),
                    unheld=_share_group(share.unheld),
                )
                for share in shares
            ],
            norm_vocabulary_version=vocabulary.version,
        )

    @rpc(Policy.PARTY)
    async def EstimateSupply(
        self, request: negotiation_pb2.EstimateSupplyRequest, call: Call
    ) -> negotiation_pb2.EstimateSupplyResponse:
        lab = call.require_role(LAB)
        terms = terms_pb2.LicenceTerms()
        terms.CopyFrom(request.terms)
        # The price is ignored; a zero one lets the terms be checked as an opening's are
        # (a currency other than the coalition's is refused, as in an opening).
        currency = request.terms.price_per_item.currency_code or self._ctx.currency
        terms.price_per_item.CopyFrom(terms_pb2.Money(currency_code=currency))
        self._check_terms(terms)
        check_declaration(terms.declaration)  # required here: the what-if is about a use
        minimum = self._ctx.policy.catalogue.minimum_group_size
        async with self._ctx.database.reader.connect() as conn:
            pool = await self._ctx.pools.load(conn)
        # No memo: the what-if runs on a worker thread, away from the loop's shared memo.
        view = supply.Pool(pool.items, pool.tokens, lab.key_id, utcnow())
        # The quorum and price guard the negotiation would apply to these very terms.
        policy = deals.policy_for(self._ctx, terms)
        # One pass over the pool per weighed change: keep the event loop free meanwhile.
        result = await asyncio.to_thread(
            supply.estimate, view, terms, policy.quorum, policy.max_price_micros, minimum
        )
        response = negotiation_pb2.EstimateSupplyResponse(
            supply=[
                negotiation_pb2.SupplyPoint(
                    price_per_item_micros=point.price_micros,
                    item_count=point.item_count,
                    member_count=point.member_count,
                )
                for point in result.curve
            ],
            quorum_items=result.quorum_items,
            covered_at_reservation=result.covered_at_reservation,
            changes=[
                negotiation_pb2.DeclarationChange(
                    norm_id=change.norm_id,
                    declaration=change.declaration,
                    more_items_at_any_price=change.more_items_at_any_price,
                    more_items_at_reservation=change.more_items_at_reservation,
                )
                for change in result.changes
            ],
            minimum_group_size=minimum,
            currency_code=self._ctx.currency,
        )
        if result.reservation_micros is not None:
            response.reservation_price_micros = result.reservation_micros
        return response

    # --- negotiating ---------------------------------------------------------------------

    @rpc(Policy.PARTY)
    async def OpenNegotiation(
        self, request: negotiation_pb2.OpenNegotiationRequest, call: Call
    ) -> Encoded:
        lab = call.require_role(LAB)
        key = idempotency_key(request, call)
        envelope, statement = signed_statement(
            request, "request", negotiation_pb2.NegotiationRequest, call
        )
        self._check_terms(statement.terms)
        effect = _LabMove(
            self._ctx, statements.statement_id(envelope), lab.key_id, opening=statement.terms
        )
        result = await self._ctx.sequencer.submit(
            Group(
                (Submission(envelope, lab.key_id, (effect.negotiation_id,)),),
                effect.response,
                key,
                run=RunRequest(_decide_moves, effect),
            )
        )
        return Encoded(result.response)

    @rpc(Policy.PARTY)
    async def Move(self, request: negotiation_pb2.MoveRequest, call: Call) -> Encoded:
        lab = call.require_role(LAB)
        key = idempotency_key(request, call)
        envelope, move = signed_statement(request, "move", negotiation_pb2.NegotiationMove, call)
        _check_negotiation_id(move.negotiation_id)
        if move.kind == machine.OFFER:
            self._check_terms(move.terms)
        elif move.kind not in (machine.ACCEPT, machine.TERMINATE):
            raise InvalidArgumentError("BAD_MOVE", "a move is an offer, accept or terminate")
        effect = _LabMove(self._ctx, move.negotiation_id, lab.key_id, move=move)
        result = await self._ctx.sequencer.submit(
            Group(
                (Submission(envelope, lab.key_id, (move.negotiation_id,)),),
                effect.response,
                key,
                run=RunRequest(_decide_moves, effect),
            )
        )
        return Encoded(result.response)

    @rpc(Policy.PARTY)
    async def SignAgreement(
        self, request: negotiation_pb2.SignAgreementRequest, call: Call
    ) -> Encoded:
        lab = call.require_role(LAB)
        key = idempotency_key(request, call)
        if not request.HasField("agreement"):
            raise InvalidArgumentError("MISSING_FIELD", "agreement is required")
        envelope = decode_envelope(request.agreement, "agreement")
        caller = call.require_caller()
        agreement = open_statement(envelope, access_pb2.Agreement, caller.public_key)
        _check_negotiation_id(agreement.negotiation_id)
        (lab_signature,) = [s for s in envelope.signatures if s.keyid == caller.key_id]
        effect: deals.StartRatification | _SignedDraft
        if self._ctx.policy.ratification.required:
            submission, effect = await self._ratification_call(
                lab.key_id, agreement, envelope.payload, lab_signature
            )
        else:
            # No vote: countersign and log the agreement now (the payouts follow it).
            both = deals.countersigned(self._ctx, envelope.payload, lab_signature)
            effect = _SignedDraft(self._ctx, lab.key_id, agreement, envelope.payload, both)
            submission = Submission(
                both,
                lab.key_id,
                (agreement.negotiation_id, self._ctx.coalition_key.key_id),
                effect,
            )
        result = await self._ctx.sequencer.submit(
            Group(
                (submission,),
                lambda receipts: negotiation_pb2.SignAgreementResponse(
                    negotiation=effect.proto(), receipt=receipts[0]
                ).SerializeToString(),
                key,
            )
        )
        return Encoded(result.response)

    async def _ratification_call(
        self,
        lab: str,
        agreement: access_pb2.Agreement,
        payload: bytes,
        lab_signature: dsse.Signature,
    ) -> tuple[Submission, deals.StartRatification]:
        """The coalition's RatificationCall, logged with the lab's signature kept aside."""
        async with self._ctx.database.reader.connect() as conn:
            entry = _own(await store.negotiation(conn, agreement.negotiation_id), lab)
            found = await items_store.load_items(conn, list(agreement.covered_item_ids))
        members = {record.contributor_key_id for record in found.values()}
        closes_at = utcnow() + self._ctx.policy.ratification.window
        effect = deals.StartRatification(self._ctx, lab, payload, lab_signature, closes_at)
        call_statement = deals.ratification_call(
            self._ctx,
            replace(entry, agreement_draft=payload),
            closes_at,
            len(found),
            len(members),
        )
        return (
            deals.coalition_submission(
                self._ctx,
                call_statement,
                (agreement.negotiation_id, lab, *sorted(members)),
                effect,
            ),
            effect,
        )

    @rpc(Policy.PARTY)
    async def CastBallot(self, request: negotiation_pb2.CastBallotRequest, call: Call) -> Encoded:
        member = call.require_role(CONTRIBUTOR)
        key = idempotency_key(request, call)
        envelope, ballot = signed_statement(request, "ballot", negotiation_pb2.Ballot, call)
        _check_negotiation_id(ballot.negotiation_id)
        disputes.check_ballot_reasons(ballot.reasons)
        effect = deals.CountBallot(self._ctx, member.key_id, ballot)
        result = await self._ctx.sequencer.submit(
            Group(
                (Submission(envelope, member.key_id, (ballot.negotiation_id,), effect),),
                lambda receipts: negotiation_pb2.CastBallotResponse(
                    receipt=receipts[0],
                    state=negotiation_pb2.NegotiationState.ValueType(effect.state),
                ).SerializeToString(),
                key,
            )
        )
        return Encoded(result.response)

    @rpc(Policy.PARTY)
    async def ListRatifications(
        self, request: negotiation_pb2.ListRatificationsRequest, call: Call
    ) -> negotiation_pb2.ListRatificationsResponse:
        member = call.require_role(CONTRIBUTOR)
        async with self._ctx.database.reader.connect() as conn:
            open_ = await store.ratifying(conn)
            mine = {r.item_id for r in await items_store.member_items(conn, member.key_id)}
            result = []
            for entry in open_:
                assert entry.agreement_draft is not None
                draft = access_pb2.Agreement.FromString(entry.agreement_draft)
                yours = len(mine & set(draft.covered_item_ids))
                if not yours or entry.ratification_closes_at is None:
                    continue
                votes = await store.ballots(conn, entry.negotiation_id)
                result.append(
                    negotiation_pb2.Ratification(
                        negotiation_id=entry.negotiation_id,
                        agreement_draft=entry.agreement_draft,
                        your_items=yours,
                        closes_at=to_timestamp(entry.ratification_closes_at),
                        voted=member.key_id in votes,
                    )
                )
        return negotiation_pb2.ListRatificationsResponse(ratifications=result)

    @rpc(Policy.PARTY)
    async def GetEarnings(
        self, request: negotiation_pb2.GetEarningsRequest, call: Call
    ) -> negotiation_pb2.GetEarningsResponse:
        member = call.require_role(CONTRIBUTOR)
        ledger = LedgerStore(self._ctx.database)
        async with self._ctx.database.reader.connect() as conn:
            lines = await store.member_payout_lines(conn, member.key_id)
        earnings = []
        for agreement_id, line_index, statement_index in lines:
            leaf = (await ledger.entry(index=statement_index)).leaf
            statement = negotiation_pb2.PayoutStatement.FromString(
                ledger_pb2.LedgerLeaf.FromString(leaf).envelope.payload
            )
            tree = merkle.InMemoryTree(
                line.SerializeToString(deterministic=True) for line in statement.lines
            )
            earnings.append(
                negotiation_pb2.Earning(
                    agreement_id=agreement_id,
                    line=statement.lines[line_index],
                    line_index=line_index,
                    line_proof=tree.inclusion_proof(line_index),
                    statement_index=statement_index,
                )
            )
        return negotiation_pb2.GetEarningsResponse(earnings=earnings)

    @rpc(Policy.PUBLIC)
    async def GetPayoutStatement(
        self, request: negotiation_pb2.GetPayoutStatementRequest, call: Call
    ) -> negotiation_pb2.GetPayoutStatementResponse:
        _check_negotiation_id(request.agreement_id)
        async with self._ctx.database.reader.connect() as conn:
            index = await store.payout_statement_index(conn, request.agreement_id)
        if index is None:
            raise NotFoundError("PAYOUT_NOT_FOUND", "no payout statement for that agreement")
        leaf = (await LedgerStore(self._ctx.database).entry(index=index)).leaf
        return negotiation_pb2.GetPayoutStatementResponse(
            statement=ledger_pb2.LedgerLeaf.FromString(leaf).envelope, index=index
        )

    @rpc(Policy.PARTY)
    async def GetNegotiation(
        self, request: negotiation_pb2.GetNegotiationRequest, call: Call
    ) -> negotiation_pb2.GetNegotiationResponse:
        lab = call.require_role(LAB)
        _check_negotiation_id(request.negotiation_id)
        async with self._ctx.database.reader.connect() as conn:
            entry = _own(await store.negotiation(conn, request.negotiation_id), lab.key_id)
        return negotiation_pb2.GetNegotiationResponse(negotiation=entry.to_proto())

    @rpc(Policy.PARTY)
    async def ListNegotiations(
        self, request: negotiation_pb2.ListNegotiationsRequest, call: Call
    ) -> negotiation_pb2.ListNegotiationsResponse:
        lab = call.require_role(LAB)
        start = decode_token(request.page_token) if request.page_token else 0
        size = page_size(request.page_size)
        async with self._ctx.database.reader.connect() as conn:
            entries = await store.lab_negotiations(conn, lab.key_id, start, size + 1)
        token = encode_token(entries[size - 1].index + 1) if len(entries) > size else ""
        return negotiation_pb2.ListNegotiationsResponse(
            negotiations=[e.to_proto() for e in entries[:size]], next_page_token=token
        )

    @rpc(Policy.PARTY)
    async def WatchNegotiation(
        self, request: negotiation_pb2.WatchNegotiationRequest, call: Call
    ) -> AsyncIterator[negotiation_pb2.WatchNegotiationResponse]:
        lab = call.require_role(LAB)
        _check_negotiation_id(request.negotiation_id)
        async with self._ctx.database.reader.connect() as conn:
            _own(await store.negotiation(conn, request.negotiation_id), lab.key_id)
        ledger = LedgerStore(self._ctx.database)
        since = request.since_index
        if since >= 2**63:
            raise InvalidArgumentError("BAD_INDEX", "since_index is beyond any ledger")
        while True:
            entries = await ledger.entries_by_subject(request.negotiation_id, "", since, 100)
            for entry in entries:
                envelope = ledger_pb2.LedgerLeaf.FromString(entry.leaf).envelope
                yield negotiation_pb2.WatchNegotiationResponse(
                    index=entry.index,
                    statement=envelope,
                    state=negotiation_pb2.NegotiationState.ValueType(
                        _state_after(envelope, self._ctx.coalition_key.key_id)
                    ),
                )
                since = entry.index + 1
                if _state_after(envelope, self._ctx.coalition_key.key_id) in (
                    machine.FINALIZED,
                    machine.TERMINATED,
                ):
                    return
            if not entries:
                await self._ctx.sequencer.wait_for_commit(self._ctx.follow_poll_seconds)

    async def expire_due(self) -> int:
        """Terminate open negotiations past their deadline (a coalition-signed move each)."""
        now = utcnow()
        async with self._ctx.database.reader.connect() as conn:
            due = await store.expired(
                conn, now, frozenset((machine.REQUESTED, machine.OFFERED, machine.COUNTERED))
            )
            entries = [await store.negotiation(conn, negotiation_id) for negotiation_id in due]
        for entry in entries:
            if entry is None:
                continue
            effect = _Expire(self._ctx, entry.negotiation_id, entry.round)
            move = _coalition_move(
                self._ctx,
                entry.negotiation_id,
                entry.round + 1,
                machine.TERMINATE,
                None,
                "DEADLINE",
            )
            try:
                await self._ctx.sequencer.submit_one(
                    Submission(
                        move,
                        self._ctx.coalition_key.key_id,
                        (entry.negotiation_id, entry.lab_key_id),
                        effect,
                    ),
                    lambda receipt: b"",
                )
            except FailedPreconditionError:
                continue  # someone moved it meanwhile
        return len(due) + await self._close_ratifications(now)

    async def _close_ratifications(self, now: datetime) -> int:
        """Decide ballots whose window has closed, with the votes cast."""
        async with self._ctx.database.reader.connect() as conn:
            closed = await store.ratifications_closed(conn, now)
            outcomes = []
            for negotiation_id in closed:
                entry = await store.negotiation(conn, negotiation_id)
                if entry is not None:
                    outcomes.append((entry, *await deals.close_outcome(self._ctx, conn, entry)))
        for entry, votes, approved in outcomes:
            effect = deals.CloseRatification(self._ctx, entry.negotiation_id, votes, approved)
            statement = deals.result_of(self._ctx, entry.negotiation_id, votes, approved)
            try:
                await self._ctx.sequencer.submit_one(
                    deals.coalition_submission(
                        self._ctx, statement, (entry.negotiation_id, entry.lab_key_id), effect
                    ),
                    lambda receipt: b"",
                )
            except FailedPreconditionError:
                continue
        return len(outcomes)

    def _check_terms(self, terms: terms_pb2.LicenceTerms) -> None:
        machine.check_terms(
            terms, self._ctx.currency, self._ctx.policy.negotiation.max_price_micros
        )


def _share_group(group: pool_catalogue.StanceGroup) -> negotiation_pb2.NormShareGroup:
    return negotiation_pb2.NormShareGroup(
        shown=group.shown, member_count=group.member_count, item_count=group.item_count
    )


def _own(entry: store.NegotiationEntry | None, lab: str) -> store.NegotiationEntry:
    if entry is None:
        raise NotFoundError("NEGOTIATION_NOT_FOUND", "no such negotiation")
    if entry.lab_key_id != lab:
        raise PermissionDeniedError("NOT_YOUR_NEGOTIATION", "that negotiation is another lab's")
    return entry


def _state_after(envelope: envelope_pb2.Envelope, coalition_key_id: str) -> int:
    """The negotiation state an entry leads to (derivable from the ledger alone)."""
    name = statements.kind(envelope.payload_type)
    if name == "NegotiationRequest":
        return machine.REQUESTED
    if name == "Agreement":
        return machine.FINALIZED
    if name in ("RatificationCall", "Ballot", "RatificationResult"):
        # The outcome follows as its own entry: the agreement, or a terminating move.
        return machine.RATIFYING
    move = negotiation_pb2.NegotiationMove.FromString(envelope.payload)
    by_coalition = any(s.keyid == coalition_key_id for s in envelope.signatures)
    if move.kind == machine.TERMINATE:
        return machine.TERMINATED
    if move.kind == machine.ACCEPT:
        return machine.AGREED
    return machine.OFFERED if by_coalition else machine.COUNTERED


def _coalition_move(
    ctx: ServerContext,
    negotiation_id: str,
    round_: int,
    kind: int,
    terms: terms_pb2.LicenceTerms | None,
    reason: str = "",
) -> dsse.Envelope:
    move = negotiation_pb2.NegotiationMove(
        negotiation_id=negotiation_id,
        round=round_,
        kind=negotiation_pb2.MoveKind.ValueType(kind),
        created_time=to_timestamp(utcnow()),
        nonce=os.urandom(16),
        reason=reason,
    )
    if terms is not None:
        move.terms.CopyFrom(terms)
    return statements.sign_statement(move, ctx.coalition_key)


@dataclass
class _LabMove:
    """A lab's opening request or move, and the coalition's answer in the same group."""

    ctx: ServerContext
    negotiation_id: str
    lab: str
    opening: terms_pb2.LicenceTerms | None = None
    move: negotiation_pb2.NegotiationMove | None = None
    entry: store.NegotiationEntry | None = None
    answer: bytes | None = None
    """The coalition's answer, encoded as its ledger entry embeds it."""

    def response(self, receipts: Sequence[ledger_pb2.Receipt]) -> bytes:
        """The encoded MoveResponse or OpenNegotiationResponse (the same three fields): the
        negotiation, the receipt of the lab's move and the coalition's answer, written from
        their encodings in field order, as protobuf writes them (a test compares), rather
        than built as a message, copied into it and encoded again."""
        assert self.entry is not None
        negotiation = self.entry.to_proto().SerializeToString()
        if isinstance(receipts, Receipts):
            receipt = receipts.encoded[0]
        else:
            receipt = receipts[0].SerializeToString()
        response = length_delimited(_RESPONSE_NEGOTIATION, negotiation) + length_delimited(
            _RESPONSE_RECEIPT, receipt
        )
        if self.answer is not None:
            response += length_delimited(_RESPONSE_COALITION_MOVE, self.answer)
        return response

    def decide(
        self,
        current: store.NegotiationEntry | None,
        pool: supply.Pool,
        index: int,
        now: datetime,
    ) -> list[Submission]:
        """Apply the lab's move at ``index`` to the negotiation as it is (``current``; None
        before an opening) and answer it; return the coalition's moves to log after it.
        Refuses (DomainError) before changing anything."""
        policy = self.ctx.policy.negotiation
        if self.opening is not None:
            entry = store.NegotiationEntry(
                negotiation_id=self.negotiation_id,
                lab_key_id=self.lab,
                index=index,
                state=machine.REQUESTED,
                round=0,
                current_terms=self.opening,
                coalition_offered_last=False,
                opened_at=now,
                deadline=now + policy.deadline,
                max_rounds=policy.max_rounds,
                agreement_draft=None,
                agreement_id=None,
                termination_reason=None,
            )
        else:
            assert self.move is not None
            entry = _own(current, self.lab)
            if entry.state in machine.OPEN_STATES and entry.deadline <= now:
                raise FailedPreconditionError(
                    "NEGOTIATION_EXPIRED", "the negotiation's deadline has passed"
                )
            # Whose turn it is first (a finished negotiation says so), then the round.
            state = machine.lab_move_state(entry.state, self.move.kind)
            if self.move.round != entry.round + 1:
                raise FailedPreconditionError(
                    "STALE_ROUND",
                    f"this move is for round {self.move.round}; the next round is "
                    f"{entry.round + 1}",
                    {"next_round": str(entry.round + 1)},
                )
            reason = "LAB_TERMINATED" if state == machine.TERMINATED else None
            if self.move.kind == machine.OFFER:
                entry = replace(
                    entry,
                    state=state,
                    round=entry.round + 1,
                    termination_reason=reason,
                    current_terms=self.move.terms,
                    coalition_offered_last=False,
                )
            else:
                entry = replace(
                    entry, state=state, round=entry.round + 1, termination_reason=reason
                )
        follow_ups: list[Submission] = []
        if entry.state == machine.AGREED:
            # The lab accepted the coalition's terms: draft the agreement, or end it if the
            # pool no longer supports those terms (consent changed since the offer).
            entry, follow_up = self._agree_or_end(pool, now, entry)
            follow_ups.extend(follow_up)
        elif entry.state in (machine.REQUESTED, machine.COUNTERED):
            entry, follow_up = self._answer(pool, now, entry)
            follow_ups.extend(follow_up)
        self.entry = entry
        return follow_ups

    def pool_view(self, pool: Pool, now: datetime) -> supply.Pool:
        """The pool as this lab faces it now (``pool`` read in the sequencing transaction
        through the cache ``deals.candidates_for`` uses too, so candidates are the same)."""
        return supply.Pool(pool.items, pool.tokens, self.lab, now, pool.memo, self.ctx.pools.check)

    def _policy(self, terms: terms_pb2.LicenceTerms) -> bargaining.BargainingPolicy:
        return deals.policy_for(self.ctx, terms)

    def _answer(
        self, pool: supply.Pool, now: datetime, entry: store.NegotiationEntry
    ) -> tuple[store.NegotiationEntry, list[Submission]]:
        terms = entry.current_terms
        decision = bargaining.coalition_answer(
            self._policy(terms),
            pool,
            terms,
            entry.round + 1,
            now - entry.opened_at,
            self.ctx.policy.catalogue.minimum_group_size,
        )
        round_ = entry.round + 1
        if decision.kind == "accept":
            entry = replace(entry, round=round_, state=machine.AGREED)
            entry, extra = self._agree_or_end(pool, now, entry)
            move = _coalition_move(self.ctx, self.negotiation_id, round_, machine.ACCEPT, None)
            return entry, [self._submission(move), *extra]
        if decision.kind == "offer":
            assert decision.price_micros is not None
            offered = terms_pb2.LicenceTerms()
            offered.CopyFrom(terms)
            offered.price_per_item.micros = decision.price_micros
            if decision.declaration is not None:
                # A counter on the use itself: keep the norms that bring in the most items.
                offered.declaration.CopyFrom(decision.declaration)
            move = _coalition_move(self.ctx, self.negotiation_id, round_, machine.OFFER, offered)
            entry = replace(
                entry,
                round=round_,
                state=machine.OFFERED,
                current_terms=offered,
                coalition_offered_last=True,
            )
            return entry, [self._submission(move)]
        move = _coalition_move(
            self.ctx, self.negotiation_id, round_, machine.TERMINATE, None, decision.reason
        )
        entry = replace(
            entry, round=round_, state=machine.TERMINATED, termination_reason=decision.reason
        )
        return entry, [self._submission(move)]

    def _agree_or_end(
        self, pool: supply.Pool, now: datetime, entry: store.NegotiationEntry
    ) -> tuple[store.NegotiationEntry, list[Submission]]:
        terms = entry.current_terms
        try:
            covered = bargaining.check_agreement(
                self._policy(terms),
                pool.candidates(terms),
                terms.price_per_item.micros,
                int(terms.scope.max_item_count),
            )
        except FailedPreconditionError as exc:
            round_ = entry.round + 1
            move = _coalition_move(
                self.ctx, self.negotiation_id, round_, machine.TERMINATE, None, exc.reason
            )
            ended = replace(
                entry, round=round_, state=machine.TERMINATED, termination_reason=exc.reason
            )
            return ended, [self._submission(move)]
        ids = sorted(c.item_id for c in covered)
        # Defence in depth: each covered item re-derived through consent.permits (no hard
        # norm broken, floor plus premiums met) before anything is drafted.
        reservation.check_covered(ids, pool.items, pool.tokens_by_member, terms, self.lab, now)
        draft = access_pb2.Agreement(
            negotiation_id=self.negotiation_id,
            lab_key_id=self.lab,
            terms=terms,
            covered_items_root=item_ids_root(ids),
            covered_item_count=len(ids),
            covered_item_ids=ids,
            expiry_time=to_timestamp(now + duration(terms.licence_duration, "licence_duration")),
            created_time=to_timestamp(now),
            nonce=os.urandom(16),
        )
        return replace(entry, agreement_draft=draft.SerializeToString(deterministic=True)), []

    def _submission(self, move: dsse.Envelope) -> Submission:
        encoded = move.to_proto().SerializeToString(deterministic=True)
        if self.answer is None:
            self.answer = encoded
        return Submission(
            move, self.ctx.coalition_key.key_id, (self.negotiation_id, self.lab), encoded=encoded
        )


_RESPONSE_NEGOTIATION, _RESPONSE_RECEIPT, _RESPONSE_COALITION_MOVE = 1, 2, 3
"""The fields of MoveResponse and OpenNegotiationResponse alike."""


@dataclass
class _DecidedMoves:
    """A run of lab moves decided in memory, and the negotiation rows they leave."""

    outcomes: list[Sequence[Submission] | DomainError] = field(default_factory=list)
    opened: dict[str, store.NegotiationEntry] = field(default_factory=dict)
    moved: dict[str, store.NegotiationEntry] = field(default_factory=dict)

    async def record(self, conn: AsyncConnection) -> None:
        await store.record_moves(conn, list(self.opened.values()), list(self.moved.values()))


async def _decide_moves(ctx: RunContext, requests: Sequence[object]) -> _DecidedMoves:
    """The sequencer's runner for OpenNegotiation and Move calls queued together (decision
    35): the negotiations read in one query and the pool once, each move decided in order
    against them in memory (a later move of the same negotiation sees the earlier one), the
    rows written in one statement."""
    moves = [m for m in requests if isinstance(m, _LabMove)]
    if len(moves) != len(requests):
        raise TypeError("a move run holds lab moves only")
    current = await store.negotiations(
        ctx.conn, {m.negotiation_id for m in moves if m.move is not None}
    )
    pool = await moves[0].ctx.pools.load(ctx.conn)
    decided = _DecidedMoves()
    index = ctx.first_index
    for move in moves:
        try:
            follow_ups = move.decide(
                current.get(move.negotiation_id),
                move.pool_view(pool, ctx.integrated_time),
                index,
                ctx.integrated_time,
            )
        except DomainError as refused:
            decided.outcomes.append(refused)
            continue
        assert move.entry is not None
        current[move.negotiation_id] = move.entry
        opened = move.opening is not None or move.negotiation_id in decided.opened
        (decided.opened if opened else decided.moved)[move.negotiation_id] = move.entry
        decided.outcomes.append(follow_ups)
        index += 1 + len(follow_ups)
    return decided


@dataclass
class _SignedDraft:
    """The lab signed the draft and no vote is needed: log it countersigned, finalise."""

    ctx: ServerContext
    lab: str
    agreement: access_pb2.Agreement
    payload: bytes
    countersigned: dsse.Envelope
    record: deals.RecordAgreement | None = None

    def proto(self) -> negotiation_pb2.Negotiation:
        assert self.record is not None
        assert self.record.entry is not None
        return self.record.entry.to_proto()

    async def __call__(self, ctx: EffectContext) -> list[Submission]:
        await deals.agreed_draft(ctx, self.agreement.negotiation_id, self.lab, self.payload)
        self.record = deals.RecordAgreement(
            self.ctx,
            self.agreement.negotiation_id,
            statements.statement_id(self.countersigned),
            self.agreement,
        )
        return await self.record(ctx)


@dataclass
class _Expire:
    ctx: ServerContext
    negotiation_id: str
    round: int

    async def __call__(self, ctx: EffectContext) -> None:
        entry = await store.negotiation(ctx.conn, self.negotiation_id)
        if (
            entry is None
            or entry.state not in (machine.REQUESTED, machine.OFFERED, machine.COUNTERED)
            or entry.deadline > ctx.integrated_time
            or entry.round != self.round
        ):
            raise FailedPreconditionError("NOT_EXPIRED", "the negotiation moved meanwhile")
        await store.save(
            ctx.conn,
            replace(
                entry,
                state=machine.TERMINATED,
                round=entry.round + 1,
                termination_reason="DEADLINE",
            ),
        )
