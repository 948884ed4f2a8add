"""StrikeService: conditional withdrawals that execute together (an assurance contract).

A pledge is checked against its target's live pledges inside the sequencing transaction
that logs it; when it completes a set, the coalition's StrikeExecution and every pledged
withdrawal (marks, shredding, notices) follow it in the same batch: all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from coalition import statements
from coalition.v1 import consent_pb2, party_pb2, strike_pb2
from coalition_server.api.auth import Policy
from coalition_server.api.dispatch import Call, Encoded, rpc
from coalition_server.api.mutations import decode_envelope, idempotency_key, signed_statement
from coalition_server.context import ServerContext
from coalition_server.domain import strikes as rules
from coalition_server.domain.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from coalition_server.domain.statements import (
    HEX_ID,
    open_statement,
    timestamp,
)
from coalition_server.store import strikes as store
from coalition_server.store.parties import PartyStore
from coalition_server.store.sequencer import EffectContext, Group, Submission
from coalition_server.store.withdrawal import (
    StrikeWithdrawals,
    WithdrawalOutcome,
    WithdrawalRequest,
)
from coalition_server.timeutil import utcnow

CONTRIBUTOR = party_pb2.ROLE_CONTRIBUTOR


class StrikeServicer:
    """Members' strike pledges."""

    def __init__(self, context: ServerContext, parties: PartyStore) -> None:
        self._ctx = context
        self._parties = parties

    @rpc(Policy.PARTY)
    async def Pledge(self, request: strike_pb2.PledgeRequest, call: Call) -> Encoded:
        member = call.require_role(CONTRIBUTOR)
        key = idempotency_key(request, call)
        if not request.HasField("pledge"):
            raise InvalidArgumentError("MISSING_FIELD", "pledge is required")
        envelope = decode_envelope(request.pledge, "pledge")
        statement = open_statement(
            envelope, strike_pb2.StrikePledge, call.require_caller().public_key
        )
        async with self._ctx.database.reader.connect() as conn:
            pool_members = await store.contributor_count(conn)
        rules.check_pledge(statement, utcnow(), pool_members)
        target = statement.target_lab_key_id
        if target:
            lab = await self._parties.get(target)
            if lab is None or lab.role != party_pb2.ROLE_LAB:
                raise NotFoundError("LAB_NOT_FOUND", "the target is not a registered lab")
        if statement.min_share_basis_points:
            async with self._ctx.database.reader.connect() as conn:
                covered = await store.covered_by_target(conn, target)
            if not covered:
                raise InvalidArgumentError(
                    "IMPOSSIBLE_THRESHOLD",
                    "the target's agreements cover no items: a share of them can never be met",
                )
        pledge = rules.Pledge(
            statements.statement_id(envelope),
            member.key_id,
            target,
            statement.min_members,
            statement.min_share_basis_points,
        )
        effect = _PledgeEffect(self._ctx, pledge, statement)
        result = await self._ctx.sequencer.submit(
            Group(
                (Submission(envelope, member.key_id, (target,) if target else (), effect),),
                lambda receipts: strike_pb2.PledgeResponse(
                    pledge_id=pledge.pledge_id,
                    receipt=receipts[0],
                    executed=pledge.pledge_id in effect.executed,
                    executed_pledges=len(effect.executed),
                ).SerializeToString(),
                key,
            )
        )
        return Encoded(result.response)

    @rpc(Policy.PARTY)
    async def RetractPledge(self, request: strike_pb2.RetractPledgeRequest, call: Call) -> Encoded:
        member = call.require_role(CONTRIBUTOR)
        key = idempotency_key(request, call)
        envelope, statement = signed_statement(
            request, "retraction", strike_pb2.PledgeRetraction, call
        )
        if not HEX_ID.match(statement.pledge_id):
            raise InvalidArgumentError("BAD_PLEDGE_ID", "pledge ids are 32 lowercase hex")
        effect = _RetractEffect(member.key_id, statement.pledge_id)
        result = await self._ctx.sequencer.submit(
            Group(
                (Submission(envelope, member.key_id, (), effect),),
                lambda receipts: strike_pb2.RetractPledgeResponse(
                    receipt=receipts[0]
                ).SerializeToString(),
                key,
            )
        )
        return Encoded(result.response)

    @rpc(Policy.PUBLIC)
    async def ListStrikes(
        self, request: strike_pb2.ListStrikesRequest, call: Call
    ) -> strike_pb2.ListStrikesResponse:
        now = utcnow()
        progress: dict[str, strike_pb2.StrikeProgress] = {}
        async with self._ctx.database.reader.connect() as conn:
            rows = await store.all_pledges(conn)
        for row in rows:
            entry = progress.setdefault(
                row.target, strike_pb2.StrikeProgress(target_lab_key_id=row.target)
            )
            state = store.state_at(row, now)
            if state == store.ACTIVE:
                entry.active_pledges += 1
                threshold = row.min_members
                if threshold and (
                    not entry.lowest_member_threshold or threshold < entry.lowest_member_threshold
                ):
                    entry.lowest_member_threshold = threshold
            elif state == store.EXECUTED:
                entry.executed_pledges += 1
        return strike_pb2.ListStrikesResponse(strikes=[progress[t] for t in sorted(progress)])

    @rpc(Policy.PARTY)
    async def ListPledges(
        self, request: strike_pb2.ListPledgesRequest, call: Call
    ) -> strike_pb2.ListPledgesResponse:
        member = call.require_role(CONTRIBUTOR)
        now = utcnow()
        async with self._ctx.database.reader.connect() as conn:
            rows = await store.member_pledges(conn, member.key_id)
        return strike_pb2.ListPledgesResponse(
            pledges=[
                strike_pb2.PledgeRecord(
                    pledge_id=row.pledge_id,
                    pledge=strike_pb2.StrikePledge.FromString(row.payload),
                    state=strike_pb2.PledgeState.ValueType(store.state_at(row, now)),
                    index=row.idx,
                )
                for row in rows
            ]
        )


@dataclass
class _PledgeEffect:
    context: ServerContext
    pledge: rules.Pledge
    statement: strike_pb2.StrikePledge
    executed: list[str] = field(default_factory=list)

    async def __call__(self, ctx: EffectContext) -> list[Submission]:
        now = ctx.integrated_time
        expiry = timestamp(self.statement.expiry_time, "expiry_time")
        target = self.pledge.target
        # One live pledge per member and target: thresholds count members, not pledges.
        if any(
            p.member_key_id == self.pledge.member_key_id
            for p in await store.live_pledges(ctx.conn, target, now)
        ):
            raise AlreadyExistsError(
                "PLEDGE_EXISTS", "you already have a live pledge against this target"
            )
        await store.insert_pledge(ctx.conn, self.pledge, self.statement, expiry, ctx.index)
        live = await store.live_pledges(ctx.conn, target, now)
        covered = await store.covered_by_target(ctx.conn, target)

        def share_of(members: frozenset[str]) -> int:
            if not covered:
                return 0
            theirs = sum(1 for owner in covered.values() if owner in members)
            return theirs * rules.FULL_SHARE // len(covered)

        chosen = rules.executable(live, share_of)
        if not chosen:
            return []
        self.executed = sorted(p.pledge_id for p in chosen)
        execution = strike_pb2.StrikeExecution(target_lab_key_id=target, pledge_ids=self.executed)
        return [
            Submission(
                statements.sign_statement(execution, self.context.coalition_key),
                self.context.coalition_key.key_id,
                tuple(sorted({target} - {""} | {p.member_key_id for p in chosen})),
                _ExecuteStrike(self.context, target, chosen),
            )
        ]


@dataclass(frozen=True)
class _ExecuteStrike:
    """Every chosen pledge's withdrawal, in this one transaction."""

    context: ServerContext
    target: str
    chosen: Sequence[rules.Pledge]

    async def __call__(self, ctx: EffectContext) -> list[Submission]:
        await store.set_state(ctx.conn, [p.pledge_id for p in self.chosen], store.EXECUTED)
        requests = [
            WithdrawalRequest(
                member=pledge.member_key_id,
                withdrawal_id=pledge.pledge_id,
                statement=consent_pb2.Withdrawal(everything=True),
                coalition_key=self.context.coalition_key,
                outcome=WithdrawalOutcome(),
                struck_lab=self.target,
                strict=False,
            )
            for pledge in self.chosen
        ]
        return await StrikeWithdrawals(requests)(ctx)


@dataclass(frozen=True)
class _RetractEffect:
    member: str
    pledge_id: str

    async def __call__(self, ctx: EffectContext) -> None:
        row = await store.pledge_row(ctx.conn, self.pledge_id)
        if row is None:
            raise NotFoundError("PLEDGE_NOT_FOUND", "no such pledge")
        if row.member_key_id != self.member:
            raise PermissionDeniedError("NOT_YOUR_PLEDGE", "that pledge is another member's")
        if store.state_at(row, ctx.integrated_time) != store.ACTIVE:
            raise FailedPreconditionError(
                "PLEDGE_NOT_ACTIVE", "that pledge executed, lapsed or was retracted"
            )
        await store.set_state(ctx.conn, [self.pledge_id], store.RETRACTED)
