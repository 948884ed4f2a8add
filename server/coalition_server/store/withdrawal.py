"""Withdrawal that takes effect, inside the sequencer's transaction.

Everything happens in the same transaction that sequences the member's Withdrawal, so no
key release can be sequenced between the withdrawal and its consequences:

1. the tokens (or items) are marked withdrawn, so every later release check refuses them;
2. items left with no consent in force lose their wrapped data keys and content, the member's
   key-encryption key is retired (and destroyed after the retention window, once the data
   keys it still wraps are moved to a new one) and a coalition-signed ShreddingRecord
   follows the withdrawal in the ledger;
3. every lab whose agreement covered an item that lost consent *for that agreement* gets a
   coalition-signed WithdrawalNotice, with the deadline its agreement fixed.

Withdrawals are decided in bulk (decision 35): :class:`Withdrawals` loads what a set of
withdrawals needs in a fixed number of queries, decides each one in ledger order against
that state in memory (a later withdrawal of the same member sees what an earlier one did),
and writes all their consequences in a fixed number of statements. The sequencer hands it
every run of consecutive Withdraw calls of a batch (:data:`WITHDRAWALS`); an executed strike
hands it all its pledges at once. Applied one at a time, a withdrawal cost about a dozen
queries, and the sequencer managed under 100 a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition import statements
from coalition.keys import SigningKey
from coalition.v1 import access_pb2, consent_pb2
from coalition_server.domain import consent as rules
from coalition_server.domain.errors import DomainError, FailedPreconditionError
from coalition_server.store import access, items
from coalition_server.store import consent as consents
from coalition_server.store.sequencer import EffectContext, RunContext, Submission
from coalition_server.timeutil import to_timestamp


@dataclass
class WithdrawalOutcome:
    """What a withdrawal did, for the member's response."""

    shredded_item_ids: list[str] = field(default_factory=list)
    notified_labs: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class WithdrawalRequest:
    """One withdrawal to decide: a member's Withdrawal statement, or an executed strike pledge.

    A strike against one lab (``struck_lab``) withdraws the member's consent from that lab
    only: every token stops permitting it, so its agreements get notices and no key for
    the member's items is released to it again; other labs are untouched and nothing is
    shredded. A strike against every lab is a withdrawal of everything. Strike execution is
    not ``strict``: a pledging member with nothing left to withdraw is simply done.
    """

    member: str
    withdrawal_id: str
    statement: consent_pb2.Withdrawal
    coalition_key: SigningKey
    outcome: WithdrawalOutcome
    struck_lab: str = ""
    strict: bool = True

    @property
    def item_scoped(self) -> bool:
        """Whether it names items (only those, not all the member's, need loading)."""
        return not self.struck_lab and self.statement.WhichOneof("scope") == "items"


class Withdrawals:
    """The state a set of withdrawals needs, decided in memory and written in bulk.

    Built by :meth:`load`; then :meth:`decide` each withdrawal in ledger order (it raises
    DomainError and changes nothing, or returns the coalition's follow-up statements), then
    :meth:`record` once.
    """

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._items: dict[str, items.ItemRecord] = {}
        self._all_items: dict[str, list[str]] = {}  # member -> item ids, for whole-member scopes
        # Of each token naming items, the distinct items it names (read once a batch).
        self._named: dict[str, frozenset[str]] = {}
        self._tokens: dict[str, consents.ConsentEntry] = {}
        self._member_tokens: dict[str, list[str]] = {}  # member -> consent ids, ledger order
        self._struck: dict[str, set[str]] = {}
        self._stored: set[str] = set()
        self._covering: dict[str, list[str]] = {}  # item -> agreement ids
        self._agreements: dict[str, access.AgreementEntry] = {}
        # What record() writes.
        self._item_withdrawals: dict[str, int] = {}
        self._changed_tokens: set[str] = set()
        self._exclusions: dict[tuple[str, str], int] = {}
        self._shredded: set[str] = set()
        self._kek_owners: set[str] = set()
        self._notices: list[access.NoticeEntry] = []

    @classmethod
    async def load(
        cls, conn: AsyncConnection, requests: Sequence[WithdrawalRequest], now: datetime
    ) -> Withdrawals:
        """Read what deciding ``requests`` needs: a fixed number of queries (per 500 ids)."""
        state = cls(now)
        members = {r.member for r in requests}
        whole = {r.member for r in requests if not r.item_scoped}
        named = {
            item_id for r in requests if r.item_scoped for item_id in r.statement.items.item_ids
        }
        state._items = await items.load_items(conn, named)
        for member, records in (await items.members_items(conn, whole)).items():
            state._all_items[member] = [r.item_id for r in records]
            state._items.update((r.item_id, r) for r in records)
        for member, entries in (await consents.members_consents(conn, members)).items():
            state._member_tokens[member] = [e.token.consent_id for e in entries]
            state._tokens.update((e.token.consent_id, e) for e in entries)
        # Withdrawn items matter only to tokens in force that name items (to invalidate the
        # ones left naming none): each token's row counts its withdrawn items (decision 41).
        wanted = {r.statement.consent_id for r in requests if not r.struck_lab} - {""}
        state._tokens.update(await consents.consents_by_id(conn, wanted - state._tokens.keys()))
        state._struck = await consents.struck_labs(conn, members)
        candidates = [i for i, r in state._items.items() if r.contributor_key_id in members]
        state._stored = await items.stored_item_ids(conn, candidates)
        for agreement, covered in await access.agreements_covering(conn, candidates):
            state._agreements[agreement.agreement_id] = agreement
            for item_id in covered:
                state._covering.setdefault(item_id, []).append(agreement.agreement_id)
        return state

    def decide(
        self, request: WithdrawalRequest, index: int, first_follow_up: int
    ) -> list[Submission]:
        """Apply one withdrawal sequenced at ``index``, whose follow-ups will get the indices
        from ``first_follow_up`` on; refuse it (DomainError) before changing anything."""
        member, now = request.member, self._now
        scope = request.statement.WhichOneof("scope")
        if request.struck_lab:
            affected = self._items_of(member)
            if request.struck_lab not in self._struck[member]:
                self._struck[member].add(request.struck_lab)
                self._exclusions[(member, request.struck_lab)] = index
        elif scope == "consent_id":
            entry = consents.require_withdrawable(
                self._tokens.get(request.statement.consent_id), member, now
            )
            affected = [
                r
                for r in self._items_of(member)
                if rules.covers_item(entry.token, r.item_id, r.tags)
            ]
            self._set_token(entry, rules.WITHDRAWN, index)
        elif scope == "items":
            ids = list(request.statement.items.item_ids)
            mine = {
                i: self._items[i]
                for i in ids
                if i in self._items and self._items[i].contributor_key_id == member
            }
            affected = []
            for record in items.require_own_items(mine, ids, member, usable=True):
                affected.append(self._set_item(record, items.WITHDRAWN))
                self._item_withdrawals[record.item_id] = index
            # Every one was in use until now (require_own_items refuses withdrawn items).
            self._invalidate_emptied(member, frozenset(ids), index)
        else:
            given = [e for e in self._entries(member) if e.state_at(now) == rules.GIVEN]
            if not given and request.strict:
                raise FailedPreconditionError(
                    "NOTHING_TO_WITHDRAW", "you have no consent in force to withdraw"
                )
            for entry in given:
                self._set_token(entry, rules.WITHDRAWN, index)
            affected = self._items_of(member)
        remaining = self._given_tokens(member)
        follow_ups: list[Submission] = []
        shredded = sorted(
            r.item_id
            for r in affected
            if r.item_id in self._stored and not consents.consented_at_all(r, remaining, now)
        )
        if shredded:
            self._shred(member, shredded)
            shredding = access_pb2.ShreddingRecord(
                withdrawal_id=request.withdrawal_id, item_ids=shredded
            )
            follow_ups.append(_signed(shredding, request.coalition_key, (member,)))
        request.outcome.shredded_item_ids = shredded
        by_id = {r.item_id: r for r in affected}
        covered: dict[str, list[str]] = {}
        for item_id in by_id:
            for agreement_id in self._covering.get(item_id, ()):
                covered.setdefault(agreement_id, []).append(item_id)
        for agreement_id in sorted(covered):
            agreement = self._agreements[agreement_id]
            lab, terms = agreement.lab_key_id, agreement.statement.terms
            withdrawn = sorted(
                item_id
                for item_id in covered[agreement_id]
                if not consents.consented_for(by_id[item_id], remaining, terms, lab, now)
            )
            if not withdrawn:
                continue
            respond_by = now + rules.duration(terms.deletion_deadline, "deletion_deadline")
            notice = access_pb2.WithdrawalNotice(
                withdrawal_id=request.withdrawal_id,
                lab_key_id=lab,
                agreement_id=agreement_id,
                item_ids=withdrawn,
                respond_by=to_timestamp(respond_by),
            )
            submission = _signed(notice, request.coalition_key, (lab,))
            self._notices.append(
                access.NoticeEntry(
                    notice_id=statements.statement_id(submission.envelope),
                    index=first_follow_up + len(follow_ups),
                    lab_key_id=lab,
                    agreement_id=agreement_id,
                    withdrawal_id=request.withdrawal_id,
                    statement=notice,
                    respond_by=respond_by,
                    receipt_index=None,
                )
            )
            follow_ups.append(submission)
            request.outcome.notified_labs.add(lab)
        return follow_ups

    async def record(self, conn: AsyncConnection) -> None:
        """Write what every decided withdrawal did (a fixed number of statements)."""
        # Withdrawn before shredded: shredding turns only STORED items back to REGISTERED.
        await items.mark_withdrawn(conn, self._item_withdrawals)
        await consents.save_tokens(conn, (self._tokens[c] for c in sorted(self._changed_tokens)))
        await consents.exclude_labs(conn, self._exclusions)
        await items.shred_items(conn, self._shredded)
        await items.retire_keks(conn, self._kek_owners, self._now)
        await access.record_notices(conn, self._notices)

    def _items_of(self, member: str) -> list[items.ItemRecord]:
        return [self._items[i] for i in self._all_items[member]]

    def _entries(self, member: str) -> list[consents.ConsentEntry]:
        return [self._tokens[i] for i in self._member_tokens[member]]

    def _given_tokens(self, member: str) -> list[rules.Token]:
        """As :func:`consents.given_tokens`: recorded GIVEN, with the member's struck labs."""
        given = (e.token for e in self._entries(member) if e.recorded_state == rules.GIVEN)
        return consents.with_struck_labs(given, self._struck[member])

    def _set_item(self, record: items.ItemRecord, state: int) -> items.ItemRecord:
        changed = replace(record, state=state)
        self._items[record.item_id] = changed
        return changed

    def _set_token(self, entry: consents.ConsentEntry, state: int, index: int) -> None:
        self._tokens[entry.token.consent_id] = replace(
            entry, recorded_state=state, withdrawal_index=index
        )
        self._changed_tokens.add(entry.token.consent_id)

    def _invalidate_emptied(self, member: str, withdrawn: frozenset[str], index: int) -> None:
        """Tokens naming only items that are all withdrawn become INVALIDATED (ISO 27560).

        ``withdrawn``: the member's items withdrawn just now, none withdrawn before. A GIVEN
        token's count of withdrawn items is kept as they go (only item withdrawals withdraw
        items, and only GIVEN tokens are counted: tokens only leave GIVEN)."""
        for entry in self._entries(member):
            consent_id = entry.token.consent_id
            if (
                entry.recorded_state != rules.GIVEN
                or entry.token.statement.items.WhichOneof("selector") != "item_ids"
            ):
                continue
            named = self._named_items(consent_id)
            gone = len(named & withdrawn)
            if not gone:
                continue
            entry = replace(entry, withdrawn_items=entry.withdrawn_items + gone)
            self._tokens[consent_id] = entry
            self._changed_tokens.add(consent_id)
            if entry.withdrawn_items == len(named):
                self._set_token(entry, rules.INVALIDATED, index)

    def _named_items(self, consent_id: str) -> frozenset[str]:
        """The distinct items a token names by id (read from its statement once a batch)."""
        named = self._named.get(consent_id)
        if named is None:
            statement = self._tokens[consent_id].token.statement
            named = self._named[consent_id] = frozenset(statement.items.item_ids.item_ids)
        return named

    def _shred(self, member: str, item_ids: list[str]) -> None:
        self._stored.difference_update(item_ids)
        self._shredded.update(item_ids)
        self._kek_owners.add(member)
        for item_id in item_ids:
            if self._items[item_id].state == items.STORED:
                self._set_item(self._items[item_id], items.REGISTERED)


@dataclass(frozen=True)
class _Decided:
    """A run's decisions, for the sequencer: follow-ups or refusal per request."""

    outcomes: list[Sequence[Submission] | DomainError]
    state: Withdrawals

    async def record(self, conn: AsyncConnection) -> None:
        await self.state.record(conn)


async def decide_run(ctx: RunContext, requests: Sequence[object]) -> _Decided:
    """The sequencer's runner for Withdraw calls: each request a single Withdrawal statement,
    its follow-ups right after it."""
    run = [r for r in requests if isinstance(r, WithdrawalRequest)]
    if len(run) != len(requests):
        raise TypeError("a withdrawal run holds WithdrawalRequests only")
    state = await Withdrawals.load(ctx.conn, run, ctx.integrated_time)
    outcomes: list[Sequence[Submission] | DomainError] = []
    index = ctx.first_index
    for request in run:
        try:
            follow_ups = state.decide(request, index, index + 1)
        except DomainError as refused:
            outcomes.append(refused)
            continue
        outcomes.append(follow_ups)
        index += 1 + len(follow_ups)
    return _Decided(outcomes, state)


@dataclass(frozen=True)
class StrikeWithdrawals:
    """The effect of executing strike pledges: every pledge's withdrawal, decided together."""

    requests: Sequence[WithdrawalRequest]

    async def __call__(self, ctx: EffectContext) -> list[Submission]:
        state = await Withdrawals.load(ctx.conn, self.requests, ctx.integrated_time)
        follow_ups: list[Submission] = []
        for request in self.requests:
            # The sequencer appends follow-ups right after their statement, in order.
            follow_ups.extend(state.decide(request, ctx.index, ctx.index + 1 + len(follow_ups)))
        await state.record(ctx.conn)
        return follow_ups


def _signed(statement: Message, key: SigningKey, subjects: tuple[str, ...]) -> Submission:
    return Submission(
        envelope=statements.sign_statement(statement, key),
        signer_key_id=key.key_id,
        subjects=subjects,
    )
