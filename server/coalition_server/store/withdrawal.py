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
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import update

from coalition import statements
from coalition.keys import SigningKey
from coalition.v1 import access_pb2, consent_pb2
from coalition_server.domain import consent as rules
from coalition_server.domain.errors import FailedPreconditionError
from coalition_server.store import access, items, models
from coalition_server.store import consent as consents
from coalition_server.store.sequencer import EffectContext, Submission
from coalition_server.timeutil import to_timestamp


@dataclass
class WithdrawalOutcome:
    """What a withdrawal did, for the member's response."""

    shredded_item_ids: list[str] = field(default_factory=list)
    notified_labs: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class WithdrawalEffect:
    """The effect of one member's Withdrawal statement, or of an executed strike pledge.

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

    async def __call__(self, ctx: EffectContext) -> list[Submission]:
        conn, now = ctx.conn, ctx.integrated_time
        scope = self.statement.WhichOneof("scope")
        mine = {record.item_id: record for record in await items.member_items(conn, self.member)}
        if self.struck_lab:
            await consents.exclude_lab(conn, self.member, self.struck_lab, ctx.index)
            affected = list(mine.values())
        elif scope == "consent_id":
            entry = consents.require_withdrawable(
                await consents.consent(conn, self.statement.consent_id), self.member, now
            )
            await consents.mark_withdrawn(conn, [entry.token.consent_id], ctx.index)
            affected = [
                record
                for record in mine.values()
                if rules.covers_item(entry.token, record.item_id, record.tags)
            ]
        elif scope == "items":
            ids = list(self.statement.items.item_ids)
            affected = items.require_own_items(mine, ids, self.member, usable=True)
            await _withdraw_items(conn, ids, ctx.index)
            affected = [_with_state(record, items.WITHDRAWN) for record in affected]
            gone = {r.item_id for r in mine.values() if r.state == items.WITHDRAWN}
            await consents.invalidate_emptied(conn, self.member, gone | set(ids), ctx.index)
        else:
            given = [
                entry
                for entry in await consents.member_consents(conn, self.member)
                if entry.state_at(now) == rules.GIVEN
            ]
            if not given and self.strict:
                raise FailedPreconditionError(
                    "NOTHING_TO_WITHDRAW", "you have no consent in force to withdraw"
                )
            await consents.mark_withdrawn(conn, [e.token.consent_id for e in given], ctx.index)
            affected = list(mine.values())
        remaining = (await consents.given_tokens(conn, [self.member]))[self.member]
        follow_ups: list[Submission] = []
        lost = [r for r in affected if not consents.consented_at_all(r, remaining, now)]
        shredded = await items.shred_items(conn, [r.item_id for r in lost])
        if shredded:
            await items.retire_keks(conn, self.member, now)
            record = access_pb2.ShreddingRecord(
                withdrawal_id=self.withdrawal_id, item_ids=sorted(shredded)
            )
            follow_ups.append(self._coalition_statement(record, subjects=(self.member,)))
        self.outcome.shredded_item_ids = sorted(shredded)
        by_id = {r.item_id: r for r in affected}
        for agreement, covered in await access.agreements_covering(conn, by_id):
            lab, terms = agreement.lab_key_id, agreement.statement.terms
            withdrawn = sorted(
                item_id
                for item_id in covered
                if not consents.consented_for(by_id[item_id], remaining, terms, lab, now)
            )
            if not withdrawn:
                continue
            respond_by = now + rules.duration(terms.deletion_deadline, "deletion_deadline")
            notice = access_pb2.WithdrawalNotice(
                withdrawal_id=self.withdrawal_id,
                lab_key_id=lab,
                agreement_id=agreement.agreement_id,
                item_ids=withdrawn,
                respond_by=to_timestamp(respond_by),
            )
            envelope = statements.sign_statement(notice, self.coalition_key)
            follow_ups.append(
                Submission(
                    envelope=envelope,
                    signer_key_id=self.coalition_key.key_id,
                    subjects=(lab,),
                    effect=_NoticeEffect(statements.statement_id(envelope), notice, respond_by),
                )
            )
            self.outcome.notified_labs.add(lab)
        return follow_ups

    def _coalition_statement(self, statement: Any, subjects: tuple[str, ...]) -> Submission:
        return Submission(
            envelope=statements.sign_statement(statement, self.coalition_key),
            signer_key_id=self.coalition_key.key_id,
            subjects=subjects,
        )


@dataclass(frozen=True)
class _NoticeEffect:
    notice_id: str
    statement: access_pb2.WithdrawalNotice
    respond_by: datetime

    async def __call__(self, ctx: EffectContext) -> None:
        await access.record_notice(
            ctx.conn,
            access.NoticeEntry(
                notice_id=self.notice_id,
                index=ctx.index,
                lab_key_id=self.statement.lab_key_id,
                agreement_id=self.statement.agreement_id,
                withdrawal_id=self.statement.withdrawal_id,
                statement=self.statement,
                respond_by=self.respond_by,
                receipt_index=None,
            ),
        )


async def _withdraw_items(conn: Any, item_ids: list[str], index: int) -> None:
    for start in range(0, len(item_ids), 500):
        await conn.execute(
            update(models.ItemRow)
            .where(models.ItemRow.item_id.in_(item_ids[start : start + 500]))
            .values(state=items.WITHDRAWN, withdrawal_idx=index)
        )


def _with_state(record: items.ItemRecord, state: int) -> items.ItemRecord:
    return replace(record, state=state)
