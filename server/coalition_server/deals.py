"""Turning agreed terms into a deal: ratification by the covered members, the countersigned
agreement in the ledger, and the payout statement.

Everything here runs as sequencer effects: the checks and the writes happen in the same
transaction that logs the statement, in ledger order. The last line of defence sits here
too: no agreement is logged below the reservation or the quorum as they stand at that
moment (members may have joined or withdrawn since the terms were agreed).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from coalition import dsse, statements
from coalition.v1 import access_pb2, envelope_pb2, negotiation_pb2, terms_pb2
from coalition_server import agreements
from coalition_server.agreements import AgreementEffect
from coalition_server.context import ServerContext
from coalition_server.domain import bargaining, reservation, supply
from coalition_server.domain import negotiation as machine
from coalition_server.domain.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from coalition_server.domain.payouts import payout_statement
from coalition_server.store import items
from coalition_server.store import negotiation as store
from coalition_server.store.sequencer import EffectContext, Submission
from coalition_server.timeutil import to_timestamp


async def candidates_for(
    context: ServerContext, ctx: EffectContext, terms: terms_pb2.LicenceTerms, lab: str
) -> reservation.Candidates:
    """The eligible items under ``terms`` for ``lab``, from the consent in force now."""
    pools = context.pools
    pool = await pools.load(ctx.conn)
    view = supply.Pool(pool.items, pool.tokens, lab, ctx.integrated_time, pool.memo, pools.check)
    return view.candidates(terms)


def policy_for(
    context: ServerContext, terms: terms_pb2.LicenceTerms
) -> bargaining.BargainingPolicy:
    """The bargaining policy, with the quorum raised to the terms' own minimum item count."""
    return _with_min_items(context.policy.negotiation, terms.scope.min_item_count or 1)


@functools.lru_cache(maxsize=256)
def _with_min_items(
    policy: bargaining.BargainingPolicy, min_items: int
) -> bargaining.BargainingPolicy:
    # Remembered: every move asks, and a policy keeps its exact fractions once computed.
    quorum = reservation.QuorumRule(
        fraction=policy.quorum.fraction, min_items=max(policy.quorum.min_items, min_items)
    )
    return replace(policy, quorum=quorum)


async def recheck(context: ServerContext, ctx: EffectContext, draft: access_pb2.Agreement) -> None:
    """Refuse a deal below the reservation or the quorum as they stand now, or one covering
    an item no longer consented for it (withdrawn, or only under norms the use breaks).

    The last is what the agreement's own effect checks when it is logged; checking it here
    first lets a deciding ballot end the deal instead of being refused with it.
    """
    await agreements.check_consented(ctx.conn, draft, ctx.integrated_time)
    terms = draft.terms
    bargaining.check_agreement(
        policy_for(context, terms),
        await candidates_for(context, ctx, terms, draft.lab_key_id),
        terms.price_per_item.micros,
        int(terms.scope.max_item_count),
    )


def coalition_submission(
    context: ServerContext, statement: object, subjects: tuple[str, ...], effect: object = None
) -> Submission:
    """A statement signed by the coalition, to append."""
    return Submission(
        statements.sign_statement(statement, context.coalition_key),  # type: ignore[arg-type]
        context.coalition_key.key_id,
        subjects,
        effect,  # type: ignore[arg-type]
    )


async def members_of(ctx: EffectContext, item_ids: list[str]) -> dict[str, int]:
    """member -> number of the given items that are theirs."""
    counts: dict[str, int] = {}
    for record in (await items.load_items(ctx.conn, item_ids)).values():
        counts[record.contributor_key_id] = counts.get(record.contributor_key_id, 0) + 1
    return counts


def countersigned(
    context: ServerContext, draft: bytes, lab_signature: dsse.Signature
) -> dsse.Envelope:
    """The agreement signed by the lab (its stored signature) and now by the coalition."""
    payload_type = statements.payload_type(access_pb2.Agreement)
    coalition = dsse.sign(payload_type, draft, context.coalition_key).signatures
    return dsse.Envelope(payload_type, draft, (lab_signature, *coalition))


@dataclass
class RecordAgreement:
    """Logs the countersigned agreement, finalises the negotiation, then the payouts."""

    context: ServerContext
    negotiation_id: str
    agreement_id: str
    draft: access_pb2.Agreement
    entry: store.NegotiationEntry | None = None

    async def __call__(self, ctx: EffectContext) -> list[Submission]:
        entry = await store.negotiation(ctx.conn, self.negotiation_id)
        if entry is None or entry.state not in (machine.AGREED, machine.RATIFYING):
            raise FailedPreconditionError("OUT_OF_TURN", "the negotiation cannot finalise now")
        await recheck(self.context, ctx, self.draft)
        await AgreementEffect(self.agreement_id, self.draft)(ctx)
        self.entry = replace(
            entry, state=machine.FINALIZED, agreement_id=self.agreement_id, lab_signature=None
        )
        await store.save(ctx.conn, self.entry)
        by_member = await members_of(ctx, list(self.draft.covered_item_ids))
        statement = payout_statement(
            self.agreement_id, self.draft.terms, by_member, self.context.policy.payout_rule
        )
        members = [line.member_key_id for line in statement.lines]
        return [
            coalition_submission(
                self.context,
                statement,
                (self.agreement_id[:32], *members),
                _RecordPayout(self.agreement_id, members),
            )
        ]


@dataclass(frozen=True)
class _RecordPayout:
    agreement_id: str
    members: list[str]

    async def __call__(self, ctx: EffectContext) -> None:
        await store.record_payout(ctx.conn, self.agreement_id, self.members, ctx.index)


def finalisation(
    context: ServerContext, entry: store.NegotiationEntry, lab_signature: dsse.Signature
) -> Submission:
    """The submission that logs the countersigned agreement of an AGREED/RATIFYING deal."""
    assert entry.agreement_draft is not None
    envelope = countersigned(context, entry.agreement_draft, lab_signature)
    draft = access_pb2.Agreement.FromString(entry.agreement_draft)
    return Submission(
        envelope,
        draft.lab_key_id,
        (entry.negotiation_id, context.coalition_key.key_id),
        RecordAgreement(context, entry.negotiation_id, statements.statement_id(envelope), draft),
    )


def encode_signature(signature: dsse.Signature) -> bytes:
    """A DSSE signature as stored while the members vote."""
    return envelope_pb2.Signature(keyid=signature.keyid, sig=signature.sig).SerializeToString()


def decode_signature(raw: bytes) -> dsse.Signature:
    """The stored DSSE signature."""
    message = envelope_pb2.Signature.FromString(raw)
    return dsse.Signature(message.keyid, message.sig)


def ratification_call(
    context: ServerContext,
    entry: store.NegotiationEntry,
    closes_at: datetime,
    items_count: int,
    members_count: int,
) -> negotiation_pb2.RatificationCall:
    """The coalition's call to the covered members to vote."""
    assert entry.agreement_draft is not None
    policy = context.policy.ratification
    return negotiation_pb2.RatificationCall(
        negotiation_id=entry.negotiation_id,
        draft_sha256=hashlib.sha256(entry.agreement_draft).digest(),
        covered_items=items_count,
        covered_members=members_count,
        closes_at=to_timestamp(closes_at),
        quorum_basis=policy.basis,
        threshold_basis_points=round(policy.threshold * 10_000),
    )


@dataclass
class StartRatification:
    """The lab signed the draft and the policy wants a vote: open the ballot."""

    context: ServerContext
    lab: str
    payload: bytes
    lab_signature: dsse.Signature
    closes_at: datetime
    entry: store.NegotiationEntry | None = None

    def proto(self) -> negotiation_pb2.Negotiation:
        """The negotiation, now RATIFYING."""
        assert self.entry is not None
        return self.entry.to_proto()

    async def __call__(self, ctx: EffectContext) -> None:
        draft = access_pb2.Agreement.FromString(self.payload)
        entry = await agreed_draft(ctx, draft.negotiation_id, self.lab, self.payload)
        await recheck(self.context, ctx, draft)
        self.entry = replace(
            entry,
            state=machine.RATIFYING,
            lab_signature=encode_signature(self.lab_signature),
            ratification_closes_at=self.closes_at,
        )
        await store.save(ctx.conn, self.entry)


async def agreed_draft(
    ctx: EffectContext, negotiation_id: str, lab: str, payload: bytes
) -> store.NegotiationEntry:
    """The AGREED negotiation whose draft the lab signed, or the precise refusal."""
    entry = await store.negotiation(ctx.conn, negotiation_id)
    if entry is None:
        raise NotFoundError("NEGOTIATION_NOT_FOUND", "no such negotiation")
    if entry.lab_key_id != lab:
        raise PermissionDeniedError("NOT_YOUR_NEGOTIATION", "that negotiation is another lab's")
    if entry.state != machine.AGREED or entry.agreement_draft is None:
        raise FailedPreconditionError("OUT_OF_TURN", "there is no agreed draft to sign")
    if payload != entry.agreement_draft:
        raise InvalidArgumentError(
            "NOT_THE_DRAFT", "sign the agreement draft exactly as the coalition drafted it"
        )
    return entry


@dataclass
class Tally:
    """Votes so far, by items and by members."""

    approving_items: int = 0
    rejecting_items: int = 0
    approving_members: int = 0
    rejecting_members: int = 0

    def add(self, approve: bool, item_count: int) -> None:
        """Count one ballot."""
        if approve:
            self.approving_items += item_count
            self.approving_members += 1
        else:
            self.rejecting_items += item_count
            self.rejecting_members += 1


def decide(
    context: ServerContext, tally: Tally, covered: dict[str, int], closed: bool
) -> bool | None:
    """True (approved), False (rejected) or None (still open) under the policy's rule."""
    policy = context.policy.ratification
    if policy.basis == "items":
        total, yes, no = sum(covered.values()), tally.approving_items, tally.rejecting_items
    else:
        total, yes, no = len(covered), tally.approving_members, tally.rejecting_members
    needed = policy.needed(total)
    if yes >= needed:
        return True
    if no > total - needed or closed:
        return False
    return None


@dataclass
class CountBallot:
    """A covered member's ballot; when it decides the vote, the outcome follows it."""

    context: ServerContext
    member: str
    ballot: negotiation_pb2.Ballot
    state: int = 0

    async def __call__(self, ctx: EffectContext) -> list[Submission]:
        entry = await store.negotiation(ctx.conn, self.ballot.negotiation_id)
        if entry is None:
            raise NotFoundError("NEGOTIATION_NOT_FOUND", "no such negotiation")
        closes_at = entry.ratification_closes_at
        if entry.state != machine.RATIFYING or closes_at is None:
            raise FailedPreconditionError("NOT_RATIFYING", "this negotiation is not being voted on")
        if ctx.integrated_time >= closes_at:
            raise FailedPreconditionError("RATIFICATION_CLOSED", "the ballot has closed")
        assert entry.agreement_draft is not None
        draft = access_pb2.Agreement.FromString(entry.agreement_draft)
        covered = await members_of(ctx, list(draft.covered_item_ids))
        if self.member not in covered:
            raise PermissionDeniedError(
                "NOT_COVERED", "only members whose items the agreement covers vote on it"
            )
        votes = await store.ballots(ctx.conn, entry.negotiation_id)
        if self.member in votes:
            raise AlreadyExistsError("ALREADY_VOTED", "you voted on this agreement already")
        vote = store.Vote(self.ballot.approve, covered[self.member], tuple(self.ballot.reasons))
        await store.record_ballot(ctx.conn, entry.negotiation_id, self.member, vote, ctx.index)
        votes[self.member] = vote
        self.state = machine.RATIFYING
        outcome = decide(self.context, _tally(votes), covered, closed=False)
        if outcome is None:
            return []
        follow_ups, self.state = await conclude(self.context, ctx, entry, votes, outcome)
        return follow_ups


def _tally(votes: Mapping[str, store.Vote]) -> Tally:
    tally = Tally()
    for vote in votes.values():
        tally.add(vote.approve, vote.items)
    return tally


def reason_counts(
    votes: Iterable[store.Vote], minimum_group_size: int
) -> tuple[list[negotiation_pb2.ReasonCount], int]:
    """The reasons of one side's ``votes`` that at least ``minimum_group_size`` members gave
    (by norm id, ascending), and how many members gave some reason too rare to publish.

    k-anonymity, as in the catalogue: a published count always stands for at least k
    members, so no one's reason can be read off the result; a rarer reason is only counted,
    by its members, in the "other reasons" total, which names no reason.
    """
    members: Counter[str] = Counter()
    items: Counter[str] = Counter()
    side = list(votes)
    for vote in side:
        for reason in vote.reasons:
            members[reason] += 1
            items[reason] += vote.items
    shown = {reason for reason, count in members.items() if count >= minimum_group_size}
    counts = [
        negotiation_pb2.ReasonCount(norm_id=reason, members=members[reason], items=items[reason])
        for reason in sorted(shown)
    ]
    other = sum(1 for vote in side if any(reason not in shown for reason in vote.reasons))
    return counts, other


def result_of(
    context: ServerContext,
    negotiation_id: str,
    votes: Mapping[str, store.Vote],
    approved: bool,
) -> negotiation_pb2.RatificationResult:
    """The RatificationResult statement for these votes, with the tally by reason.

    Both the deciding ballot and the sweep of closed ballots draw the result here, so the
    two paths publish the same tally for the same votes.
    """
    tally = _tally(votes)
    minimum = context.policy.catalogue.minimum_group_size
    approving, approving_other = reason_counts((v for v in votes.values() if v.approve), minimum)
    rejecting, rejecting_other = reason_counts(
        (v for v in votes.values() if not v.approve), minimum
    )
    return negotiation_pb2.RatificationResult(
        negotiation_id=negotiation_id,
        approved=approved,
        approving_items=tally.approving_items,
        rejecting_items=tally.rejecting_items,
        approving_members=tally.approving_members,
        rejecting_members=tally.rejecting_members,
        approving_reasons=approving,
        rejecting_reasons=rejecting,
        approving_members_other_reasons=approving_other,
        rejecting_members_other_reasons=rejecting_other,
        minimum_group_size=minimum,
    )


async def conclude(
    context: ServerContext,
    ctx: EffectContext,
    entry: store.NegotiationEntry,
    votes: Mapping[str, store.Vote],
    approved: bool,
    *,
    with_result: bool = True,
) -> tuple[list[Submission], int]:
    """The result statement (unless it is the caller's), then the agreement or the end."""
    follow_ups = []
    if with_result:
        follow_ups.append(
            coalition_submission(
                context,
                result_of(context, entry.negotiation_id, votes, approved),
                (entry.negotiation_id, entry.lab_key_id),
            )
        )
    if approved:
        assert entry.lab_signature is not None
        assert entry.agreement_draft is not None
        try:
            await recheck(context, ctx, access_pb2.Agreement.FromString(entry.agreement_draft))
        except FailedPreconditionError as exc:
            approved, reason = False, exc.reason
        else:
            follow_ups.append(finalisation(context, entry, decode_signature(entry.lab_signature)))
            return follow_ups, machine.FINALIZED
    else:
        reason = "RATIFICATION_REJECTED"
    move = negotiation_pb2.NegotiationMove(
        negotiation_id=entry.negotiation_id,
        round=entry.round + 1,
        kind=negotiation_pb2.MOVE_KIND_TERMINATE,
        created_time=to_timestamp(ctx.integrated_time),
        nonce=os.urandom(16),
        reason=reason,
    )
    await store.save(
        ctx.conn,
        replace(
            entry,
            state=machine.TERMINATED,
            round=entry.round + 1,
            termination_reason=reason,
            lab_signature=None,
        ),
    )
    follow_ups.append(coalition_submission(context, move, (entry.negotiation_id, entry.lab_key_id)))
    return follow_ups, machine.TERMINATED


@dataclass
class CloseRatification:
    """The ballot window ended undecided: the result of the votes cast, then its effect.

    The sweep computes ``approved`` and the ``votes`` outside the transaction (the result
    statement is signed before it is sequenced); this effect re-checks both and refuses if a
    ballot slipped in meanwhile, so the next sweep decides again.
    """

    context: ServerContext
    negotiation_id: str
    votes: dict[str, store.Vote]
    approved: bool

    async def __call__(self, ctx: EffectContext) -> list[Submission]:
        entry = await store.negotiation(ctx.conn, self.negotiation_id)
        if (
            entry is None
            or entry.state != machine.RATIFYING
            or entry.ratification_closes_at is None
            or entry.ratification_closes_at > ctx.integrated_time
        ):
            raise FailedPreconditionError("NOT_CLOSED", "the ballot moved meanwhile")
        if await store.ballots(ctx.conn, entry.negotiation_id) != self.votes:
            raise FailedPreconditionError("NOT_CLOSED", "a ballot arrived meanwhile")
        follow_ups, _ = await conclude(
            self.context, ctx, entry, self.votes, self.approved, with_result=False
        )
        return follow_ups


async def close_outcome(
    context: ServerContext, conn: AsyncConnection, entry: store.NegotiationEntry
) -> tuple[dict[str, store.Vote], bool]:
    """(votes, approved) of a closed ballot, read outside the transaction."""
    assert entry.agreement_draft is not None
    draft = access_pb2.Agreement.FromString(entry.agreement_draft)
    counts: dict[str, int] = {}
    for record in (await items.load_items(conn, list(draft.covered_item_ids))).values():
        counts[record.contributor_key_id] = counts.get(record.contributor_key_id, 0) + 1
    votes = await store.ballots(conn, entry.negotiation_id)
    return votes, bool(decide(context, _tally(votes), counts, closed=True))
