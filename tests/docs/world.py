"""The rest of the coalition around the guides' reader: the other parties, played with the SDK.

A guide follows one party (a contributor, a lab, an auditor); what the others do in its story
is done here, by deterministic members and one lab, against the test's server:

* :func:`seed`, before any guide runs: eight members join, register and upload two items
  each, and consent with their own floors, some with norms; the lab Northwind Labs joins;
* the *stage directions* (``python -m tests.docs.world ACTION [ARG]``), which the test puts
  between a guide's commands where the story needs another party to act (see
  ``STAGE_DIRECTIONS`` in test_doc_commands.py):

  - ``lab-deal-awaiting-votes``: Northwind Labs strikes a deal covering the pool (and the
    contributor's items) that goes to the covered members' vote; a few members approve,
    not enough to decide it;
  - ``members-approve NEGOTIATION``: every member approves that deal, if it still may;
  - ``member-withdraws AGREEMENT``: a member the agreement pays withdraws everything;
  - ``member-disputes AGREEMENT``: another member it pays files a dispute about it.

Everything is printed, so a guide's log shows what the others did.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from coalition.client import Client, ServerError, consent_token, lab_strategy, price_floor
from coalition.keys import SigningKey
from coalition.norms import canonical_norms, parse_norm_option
from coalition.v1 import access_pb2, party_pb2, terms_pb2

CURRENCY: Final = "USD"
USD: Final = 1_000_000
RATIFICATION_THRESHOLD: Final = 0.5

POLICY: Final = f"""\
# The coalition's policy in the docs' test: members ratify every deal (half of the covered
# items must approve), and the catalogue shows groups of three members or more.
ratification:
  required: true
  basis: items
  threshold: {RATIFICATION_THRESHOLD}
  window_seconds: 3600
catalogue:
  minimum_group_size: 3
"""


@dataclass(frozen=True)
class Seeded:
    """A member of the seeded pool."""

    name: str
    floor: str
    purposes: tuple[str, ...]
    tag: str
    norms: tuple[str, ...] = ()

    @property
    def key(self) -> SigningKey:
        """Its key, the same in every run."""
        return SigningKey.from_seed(hashlib.sha256(f"docs member {self.name}".encode()).digest())

    def contents(self) -> list[bytes]:
        """Its two items."""
        return [f"{self.tag} by {self.name}, part {part}\n".encode() * 40 for part in (1, 2)]


OPEN_WEIGHTS: Final = "model-release:priced:release=open-weights:premium={}:protects=commons"
NO_WAR: Final = "prohibited-use:hard:domains=mass-surveillance,military:protects=safety"
NO_DISTILLING: Final = "derivatives:priced:forbidden=distillation:premium={}"
# Each norm is held by three members: the catalogue (k = 3) shows every group.
MEMBERS: Final = (
    Seeded("Bea", "0.40", ("train-genai",), "essays", (OPEN_WEIGHTS.format("3.00"),)),
    Seeded("Chen", "0.50", ("train-genai", "search"), "photos", (NO_WAR,)),
    Seeded("Dara", "0.60", ("train-genai",), "recipes", (NO_DISTILLING.format("0.25"),)),
    Seeded("Emeka", "0.70", ("train-genai",), "essays", (OPEN_WEIGHTS.format("3.00"),)),
    Seeded("Farah", "0.80", ("train-genai", "search"), "code", (NO_DISTILLING.format("0.40"),)),
    Seeded("Hana", "0.90", ("train-genai",), "reviews", (OPEN_WEIGHTS.format("3.00"),)),
    Seeded("Ines", "1.00", ("train-genai",), "photos", (NO_WAR,)),
    Seeded(
        "Jonas",
        "1.20",
        ("train-genai",),
        "field-notes",
        (NO_DISTILLING.format("0.20"), NO_WAR),
    ),
)
LAB_NAME: Final = "Northwind Labs"
LAB_KEY: Final = SigningKey.from_seed(hashlib.sha256(b"docs lab Northwind Labs").digest())
LAB_PRICE: Final = 6 * USD
"""What Northwind Labs pays per item: above every floor, the contributor's included."""
LATE_REASONS: Final = frozenset({"NOT_RATIFYING", "RATIFICATION_CLOSED", "ALREADY_VOTED"})


def say(text: str) -> None:
    """One line in the guide's log, marked as the other parties' doing."""
    print(f"[the others] {text}", flush=True)


# --- before the guides ------------------------------------------------------------------------


async def seed(target: str) -> None:
    """The pool: members with uploaded items and consent; the lab Northwind Labs."""

    async def join(member: Seeded) -> None:
        async with Client(target, key=member.key) as client:
            await client.register(party_pb2.ROLE_CONTRIBUTOR, member.name)
            contents = member.contents()
            registered = await client.register_items(
                [(hashlib.sha256(c).digest(), len(c), "text/plain", [member.tag]) for c in contents]
            )
            item_ids = [item.item_id for item in registered.items]
            for item_id, content in zip(item_ids, contents, strict=True):
                await client.upload(item_id, content)
            norms = canonical_norms([parse_norm_option(n, CURRENCY) for n in member.norms])
            await client.grant_consent(
                consent_token(
                    item_ids=item_ids,
                    purposes=list(member.purposes),
                    floors=[price_floor("purchase", _micros(member.floor), currency=CURRENCY)],
                    norms=norms,
                )
            )

    # One member after the other: SQLite has one writer, and the order stays the same.
    for member in MEMBERS:
        await join(member)
    async with Client(target, key=LAB_KEY) as lab:
        await lab.register(party_pb2.ROLE_LAB, LAB_NAME)
    say(f"{len(MEMBERS)} members consented to {2 * len(MEMBERS)} items; {LAB_NAME} joined")


def _micros(amount: str) -> int:
    units, _, fraction = amount.partition(".")
    return int(units) * USD + int(fraction.ljust(6, "0"))


# --- stage directions -------------------------------------------------------------------------


async def lab_deal_awaiting_votes(target: str) -> None:
    """Northwind Labs buys at a price above every floor; the deal goes to a vote, and
    members holding fewer than half of the covered items approve (so it stays open)."""
    terms = terms_pb2.LicenceTerms(
        purposes=[terms_pb2.PURPOSE_TRAIN_GENAI],
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=terms_pb2.Money(currency_code=CURRENCY, micros=LAB_PRICE),
        declaration=terms_pb2.UseDeclaration(
            model_release=terms_pb2.MODEL_RELEASE_CLOSED, jurisdictions=["US"]
        ),
    )
    terms.licence_duration.FromTimedelta(timedelta(days=365))
    terms.deletion_deadline.FromTimedelta(timedelta(days=7))
    terms.lease_duration.FromTimedelta(timedelta(hours=1))
    async with Client(target, key=LAB_KEY) as lab:
        negotiation = await lab.negotiate_auto(terms, lab_strategy("linear", LAB_PRICE, LAB_PRICE))
    if not negotiation.agreement_draft:
        raise SystemExit(f"{LAB_NAME} got no deal: {negotiation}")
    draft = access_pb2.Agreement.FromString(negotiation.agreement_draft)
    total = draft.covered_item_count
    needed = max(1, math.ceil(RATIFICATION_THRESHOLD * total))
    say(
        f"{LAB_NAME} agreed to buy {total} items at 6.00 USD each (negotiation "
        f"{negotiation.negotiation_id}); the covered members vote, {needed} items must approve"
    )
    approving = seeded_items = 0
    for member in MEMBERS:
        async with Client(target, key=member.key) as client:
            mine = next(
                (
                    r.your_items
                    for r in await client.ratifications()
                    if r.negotiation_id == negotiation.negotiation_id
                ),
                0,
            )
            seeded_items += mine
            if mine and approving + mine < needed:
                await client.cast_ballot(negotiation.negotiation_id, True)
                approving += mine
                say(f"{member.name} approved ({mine} items)")
    if seeded_items >= total:
        raise SystemExit("the deal covers no item of the guide's contributor")
    if seeded_items < needed:
        raise SystemExit("the seeded members could not carry the vote later")


async def members_approve(target: str, negotiation_id: str = "") -> None:
    """Every member approves the deal of ``negotiation_id`` (default: every deal) if it may
    still vote on it (a ballot that comes after the vote was decided is refused, and
    ignored here)."""
    for member in MEMBERS:
        async with Client(target, key=member.key) as client:
            for ratification in await client.ratifications():
                if ratification.voted or negotiation_id not in ("", ratification.negotiation_id):
                    continue
                try:
                    await client.cast_ballot(ratification.negotiation_id, True)
                except ServerError as exc:
                    if exc.reason not in LATE_REASONS:
                        raise
                    continue
                say(
                    f"{member.name} approved negotiation {ratification.negotiation_id} "
                    f"({ratification.your_items} items)"
                )


async def _paid_by(target: str, agreement_id: str) -> list[Seeded]:
    """The members the agreement pays (its payout statement has a line for them)."""
    paid = []
    for member in MEMBERS:
        async with Client(target, key=member.key) as client:
            if any(e.agreement_id == agreement_id for e in await client.earnings()):
                paid.append(member)
    if len(paid) < 2:
        raise SystemExit(f"agreement {agreement_id} pays {len(paid)} of the seeded members")
    return paid


async def member_withdraws(target: str, agreement_id: str) -> None:
    """The first member the agreement pays withdraws all its consent."""
    member = (await _paid_by(target, agreement_id))[0]
    async with Client(target, key=member.key) as client:
        response = await client.withdraw(everything=True)
    say(
        f"{member.name} withdrew everything: {len(response.shredded_item_ids)} items' keys "
        f"destroyed, {response.notified_labs} lab(s) notified"
    )


async def member_disputes(target: str, agreement_id: str) -> None:
    """The last member the agreement pays files a dispute about it."""
    member = (await _paid_by(target, agreement_id))[-1]
    async with Client(target, key=member.key) as client:
        response = await client.file_dispute(
            agreement_id,
            declaration_fields=["jurisdictions"],
            text="The model was fine-tuned in Singapore; the declaration names DE and US only.",
        )
    say(f"{member.name} filed dispute {response.dispute_id} about agreement {agreement_id}")


ACTIONS: Final[dict[str, Callable[..., Coroutine[Any, Any, None]]]] = {
    "seed": seed,
    "lab-deal-awaiting-votes": lab_deal_awaiting_votes,
    "members-approve": members_approve,
    "member-withdraws": member_withdraws,
    "member-disputes": member_disputes,
}


def main(argv: list[str]) -> int:
    """``python -m tests.docs.world ACTION [ARG...]``, against $COALITION_SERVER."""
    if not argv or argv[0] not in ACTIONS:
        print(f"usage: python -m tests.docs.world {{{','.join(ACTIONS)}}} [ARG...]")
        return 2
    asyncio.run(ACTIONS[argv[0]](os.environ["COALITION_SERVER"], *argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
