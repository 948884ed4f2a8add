"""Negotiations in the store: one row per negotiation, updated by each sequenced move."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition.v1 import negotiation_pb2, terms_pb2
from coalition_server.store import bulk, models
from coalition_server.timeutil import as_utc, to_timestamp


@dataclass(frozen=True)
class NegotiationEntry:
    """A negotiation's current state."""

    negotiation_id: str
    lab_key_id: str
    index: int
    state: int
    round: int
    current_terms: terms_pb2.LicenceTerms
    coalition_offered_last: bool
    opened_at: datetime
    deadline: datetime
    max_rounds: int
    agreement_draft: bytes | None
    agreement_id: str | None
    termination_reason: str | None
    lab_signature: bytes | None = None
    ratification_closes_at: datetime | None = None

    def to_proto(self) -> negotiation_pb2.Negotiation:
        """The API representation."""
        return negotiation_pb2.Negotiation(
            negotiation_id=self.negotiation_id,
            lab_key_id=self.lab_key_id,
            state=negotiation_pb2.NegotiationState.ValueType(self.state),
            round=self.round,
            current_terms=self.current_terms,
            coalition_offered_last=self.coalition_offered_last,
            deadline=to_timestamp(self.deadline),
            max_rounds=self.max_rounds,
            agreement_draft=self.agreement_draft or b"",
            agreement_id=self.agreement_id or "",
            index=self.index,
            ratification_deadline=(
                to_timestamp(self.ratification_closes_at)
                if self.ratification_closes_at is not None
                else None
            ),
        )


def _entry(row: Any) -> NegotiationEntry:
    return NegotiationEntry(
        negotiation_id=row.negotiation_id,
        lab_key_id=row.lab_key_id,
        index=row.idx,
        state=row.state,
        round=row.round,
        current_terms=terms_pb2.LicenceTerms.FromString(row.current_terms),
        coalition_offered_last=bool(row.coalition_offered_last),
        opened_at=as_utc(row.opened_at),
        deadline=as_utc(row.deadline),
        max_rounds=row.max_rounds,
        agreement_draft=None if row.agreement_draft is None else bytes(row.agreement_draft),
        agreement_id=row.agreement_id,
        termination_reason=row.termination_reason,
        lab_signature=None if row.lab_signature is None else bytes(row.lab_signature),
        ratification_closes_at=(
            None if row.ratification_closes_at is None else as_utc(row.ratification_closes_at)
        ),
    )


_TABLE = models.NegotiationRow.__table__
assert isinstance(_TABLE, Table)
# Built once: every batch of moves runs them, and building a statement (and its ORM
# handling) cost about as much as running it. Core statements on the table itself.
_SAVE = (
    update(_TABLE)
    .where(_TABLE.c.negotiation_id == bindparam("b_negotiation_id"))
    .values(
        state=bindparam("b_state"),
        round=bindparam("b_round"),
        current_terms=bindparam("b_current_terms"),
        coalition_offered_last=bindparam("b_coalition_offered_last"),
        agreement_draft=bindparam("b_agreement_draft"),
        agreement_id=bindparam("b_agreement_id"),
        termination_reason=bindparam("b_termination_reason"),
        lab_signature=bindparam("b_lab_signature"),
        ratification_closes_at=bindparam("b_ratification_closes_at"),
    )
)


_CHANGING = (
    "state",
    "round",
    "current_terms",
    "coalition_offered_last",
    "agreement_draft",
    "agreement_id",
    "termination_reason",
    "lab_signature",
    "ratification_closes_at",
)
"""The columns a negotiation's moves change (what :func:`save_all` writes)."""


def _upsert(statement: sqlite.Insert | postgresql.Insert) -> Executable:
    return statement.on_conflict_do_update(
        index_elements=[_TABLE.c.negotiation_id],
        set_={name: statement.excluded[name] for name in _CHANGING},
    )


_RECORD = {
    "sqlite": _upsert(sqlite.insert(_TABLE)),
    "postgresql": _upsert(postgresql.insert(_TABLE)),
}


def _row(entry: NegotiationEntry) -> dict[str, object]:
    return {
        "negotiation_id": entry.negotiation_id,
        "lab_key_id": entry.lab_key_id,
        "idx": entry.index,
        "state": entry.state,
        "round": entry.round,
        "current_terms": entry.current_terms.SerializeToString(deterministic=True),
        "coalition_offered_last": entry.coalition_offered_last,
        "opened_at": entry.opened_at,
        "deadline": entry.deadline,
        "max_rounds": entry.max_rounds,
        "agreement_draft": entry.agreement_draft,
        "agreement_id": entry.agreement_id,
        "termination_reason": entry.termination_reason,
        "lab_signature": entry.lab_signature,
        "ratification_closes_at": entry.ratification_closes_at,
    }


async def record_moves(
    conn: AsyncConnection,
    opened: Sequence[NegotiationEntry],
    moved: Sequence[NegotiationEntry],
) -> None:
    """Record a run of lab moves: the negotiations they ``opened`` (new rows) and ``moved``
    (rows read in the same transaction), in one statement rather than an insert and an
    update; each statement a batch runs costs a round trip (on SQLite, several hand-overs to
    the driver's thread) while every other call waits for the batch.

    An upsert on the negotiation id that writes only what a move changes. A new id never
    takes the update path (it is the id of the opening statement, which the ledger holds
    once) and a moved one never takes the insert path (it was just read)."""
    entries = [*opened, *moved]
    if not entries:
        return
    await bulk.execute_many(conn, _RECORD[conn.dialect.name], [_row(entry) for entry in entries])


async def save(conn: AsyncConnection, entry: NegotiationEntry) -> None:
    """Write a negotiation's new state."""
    await save_all(conn, [entry])


async def save_all(conn: AsyncConnection, entries: Sequence[NegotiationEntry]) -> None:
    """Write negotiations' new states (one executemany)."""
    if not entries:
        return
    await bulk.execute_many(
        conn,
        _SAVE,
        [
            {
                "b_negotiation_id": entry.negotiation_id,
                "b_state": entry.state,
                "b_round": entry.round,
                "b_current_terms": entry.current_terms.SerializeToString(deterministic=True),
                "b_coalition_offered_last": entry.coalition_offered_last,
                "b_agreement_draft": entry.agreement_draft,
                "b_agreement_id": entry.agreement_id,
                "b_termination_reason": entry.termination_reason,
                "b_lab_signature": entry.lab_signature,
                "b_ratification_closes_at": entry.ratification_closes_at,
            }
            for entry in entries
        ],
    )


async def negotiation(conn: AsyncConnection, negotiation_id: str) -> NegotiationEntry | None:
    """One negotiation by id."""
    return (await negotiations(conn, [negotiation_id])).get(negotiation_id)


async def negotiations(
    conn: AsyncConnection, negotiation_ids: Iterable[str]
) -> dict[str, NegotiationEntry]:
    """Negotiations by id (missing ids are simply absent)."""
    rows = await bulk.select_in(conn, models.NegotiationRow, "negotiation_id", negotiation_ids)
    return {row.negotiation_id: _entry(row) for row in rows}


async def lab_negotiations(
    conn: AsyncConnection, lab_key_id: str, start_index: int, limit: int
) -> list[NegotiationEntry]:
    """A lab's negotiations in ledger order."""
    rows = await conn.execute(
        select(models.NegotiationRow)
        .where(
            models.NegotiationRow.lab_key_id == lab_key_id,
            models.NegotiationRow.idx >= start_index,
        )
        .order_by(models.NegotiationRow.idx)
        .limit(limit)
    )
    return [_entry(row) for row in rows]


async def expired(conn: AsyncConnection, now: datetime, states: frozenset[int]) -> list[str]:
    """Ids of negotiations in ``states`` whose deadline has passed."""
    rows = await conn.execute(
        select(models.NegotiationRow.negotiation_id).where(
            models.NegotiationRow.state.in_(sorted(states)),
            models.NegotiationRow.deadline <= now,
        )
    )
    return [row.negotiation_id for row in rows]


async def ratifications_closed(conn: AsyncConnection, now: datetime) -> list[str]:
    """Ids of negotiations whose ballots closed without a decision."""
    rows = await conn.execute(
        select(models.NegotiationRow.negotiation_id).where(
            models.NegotiationRow.state == negotiation_pb2.NEGOTIATION_STATE_RATIFYING,
            models.NegotiationRow.ratification_closes_at <= now,
        )
    )
    return [row.negotiation_id for row in rows]


@dataclass(frozen=True)
class Vote:
    """One member's ballot as counted: the vote, their covered items, and their reasons."""

    approve: bool
    items: int
    reasons: tuple[str, ...] = ()


async def ballots(conn: AsyncConnection, negotiation_id: str) -> dict[str, Vote]:
    """member -> their vote, for every ballot cast in a negotiation."""
    rows = await conn.execute(
        select(models.BallotRow).where(models.BallotRow.negotiation_id == negotiation_id)
    )
    return {
        row.member_key_id: Vote(bool(row.approve), row.item_count, tuple(row.reasons.split()))
        for row in rows
    }


async def record_ballot(
    conn: AsyncConnection, negotiation_id: str, member: str, vote: Vote, index: int
) -> None:
    """Insert a ballot."""
    await conn.execute(
        insert(models.BallotRow),
        [
            {
                "negotiation_id": negotiation_id,
                "member_key_id": member,
                "approve": vote.approve,
                "item_count": vote.items,
                # Norm ids are kebab-case: a space never occurs in one.
                "reasons": " ".join(vote.reasons),
                "idx": index,
            }
        ],
    )


async def record_payout(
    conn: AsyncConnection, agreement_id: str, members: list[str], index: int
) -> None:
    """Index a payout statement's lines by member (line i belongs to members[i])."""
    if members:
        await conn.execute(
            insert(models.PayoutLineRow),
            [
                {
                    "agreement_id": agreement_id,
                    "line_index": i,
                    "member_key_id": member,
                    "statement_idx": index,
                }
                for i, member in enumerate(members)
            ],
        )


async def ratifying(conn: AsyncConnection) -> list[NegotiationEntry]:
    """Negotiations whose agreement is being voted on."""
    rows = await conn.execute(
        select(models.NegotiationRow).where(
            models.NegotiationRow.state == negotiation_pb2.NEGOTIATION_STATE_RATIFYING
        )
    )
    return [_entry(row) for row in rows]


async def member_payout_lines(conn: AsyncConnection, member: str) -> list[tuple[str, int, int]]:
    """(agreement id, line index, statement ledger index) of a member's payout lines."""
    rows = await conn.execute(
        select(models.PayoutLineRow)
        .where(models.PayoutLineRow.member_key_id == member)
        .order_by(models.PayoutLineRow.statement_idx)
    )
    return [(row.agreement_id, row.line_index, row.statement_idx) for row in rows]


async def payout_statement_index(conn: AsyncConnection, agreement_id: str) -> int | None:
    """Ledger index of an agreement's payout statement."""
    row = (
        await conn.execute(
            select(models.PayoutLineRow.statement_idx)
            .where(models.PayoutLineRow.agreement_id == agreement_id)
            .limit(1)
        )
    ).first()
    return None if row is None else int(row.statement_idx)
