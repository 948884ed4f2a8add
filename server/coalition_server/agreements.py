"""Concluding an agreement: the lab's signed terms, countersigned by the coalition, logged.

The negotiation service calls this when a deal is agreed; until then an operator (or a test)
may call it directly. The coalition only countersigns terms that cover items still consented
for this lab under these terms, and the agreement names exactly those items.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from coalition import dsse, merkle, statements
from coalition.keys import PublicKey
from coalition.v1 import access_pb2, ledger_pb2, party_pb2
from coalition_server.context import ServerContext
from coalition_server.domain import consent as rules
from coalition_server.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from coalition_server.domain.statements import check_nonce, open_statement, timestamp
from coalition_server.store import access, items
from coalition_server.store import consent as consents
from coalition_server.store.parties import PartyStore
from coalition_server.store.sequencer import EffectContext, Submission


def item_ids_root(item_ids: list[str]) -> bytes:
    """RFC 6962 root over sorted item ids (leaf = the id's ASCII bytes)."""
    tree = merkle.CompactRange.empty()
    for item_id in sorted(item_ids):
        tree.append(merkle.leaf_hash(item_id.encode()))
    return tree.root()


async def check_consented(
    conn: AsyncConnection, statement: access_pb2.Agreement, at: datetime
) -> None:
    """Every covered item exists and some GIVEN token of its member permits the agreement's
    terms for its lab at ``at`` (``consent.permits``: purposes, floors, norms, exclusions).

    Raises FailedPreconditionError ITEM_NOT_FOUND or ITEM_NOT_CONSENTED naming the item.
    """
    ids = list(statement.covered_item_ids)
    found = await items.load_items(conn, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise FailedPreconditionError(
            "ITEM_NOT_FOUND", "a covered item does not exist", {"item_id": missing[0]}
        )
    tokens = await consents.given_tokens(
        conn, {record.contributor_key_id for record in found.values()}
    )
    for item_id in ids:
        record = found[item_id]
        if not consents.consented_for(
            record,
            tokens[record.contributor_key_id],
            statement.terms,
            statement.lab_key_id,
            at,
        ):
            raise FailedPreconditionError(
                "ITEM_NOT_CONSENTED",
                "a covered item is not consented for these terms",
                {"item_id": item_id},
            )


@dataclass(frozen=True)
class AgreementEffect:
    """Checks every covered item is consented for the lab under the terms; records it."""

    agreement_id: str
    statement: access_pb2.Agreement

    async def __call__(self, ctx: EffectContext) -> None:
        expiry = timestamp(self.statement.expiry_time, "expiry_time")
        if expiry <= ctx.integrated_time:
            raise FailedPreconditionError("AGREEMENT_EXPIRED", "the agreement has expired")
        await check_consented(ctx.conn, self.statement, ctx.integrated_time)
        await access.record_agreement(
            ctx.conn, self.agreement_id, self.statement, ctx.index, expiry
        )


async def conclude_agreement(
    context: ServerContext, parties: PartyStore, lab_signed: dsse.Envelope
) -> tuple[str, ledger_pb2.Receipt]:
    """Countersign and log an Agreement the lab has signed; return its id and receipt."""
    try:
        lab_key_id = access_pb2.Agreement.FromString(lab_signed.payload).lab_key_id
    except Exception:
        raise InvalidArgumentError("MALFORMED_STATEMENT", "not an Agreement") from None
    lab = await parties.get(lab_key_id)
    if lab is None or lab.role != party_pb2.ROLE_LAB:
        raise PermissionDeniedError("NOT_A_LAB", "lab_key_id does not name a registered lab")
    statement = open_statement(lab_signed, access_pb2.Agreement, PublicKey(lab.signing_key))
    check_nonce(statement.nonce)
    if not statement.terms.purposes:
        raise InvalidArgumentError("MISSING_PURPOSES", "terms need at least one purpose")
    if sorted(set(statement.covered_item_ids)) != list(statement.covered_item_ids):
        raise InvalidArgumentError("BAD_ITEMS", "covered item ids must be sorted and distinct")
    if statement.covered_item_count != len(statement.covered_item_ids) or (
        statement.covered_items_root != item_ids_root(list(statement.covered_item_ids))
    ):
        raise InvalidArgumentError("BAD_ITEMS_ROOT", "count or Merkle root does not match")
    rules.duration(statement.terms.deletion_deadline, "deletion_deadline")
    rules.duration(statement.terms.lease_duration, "lease_duration")
    coalition_signature = dsse.sign(
        lab_signed.payload_type, lab_signed.payload, context.coalition_key
    ).signatures
    both = dsse.Envelope(
        lab_signed.payload_type,
        lab_signed.payload,
        (*lab_signed.signatures, *coalition_signature),
    )
    agreement_id = statements.statement_id(both)
    result = await context.sequencer.submit_one(
        Submission(
            both,
            lab_key_id,
            subjects=(context.coalition_key.key_id,),
            effect=AgreementEffect(agreement_id, statement),
        ),
        lambda receipt: receipt.SerializeToString(),
    )
    return agreement_id, result.receipts[0]
