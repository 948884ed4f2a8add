"""Bargaining over members' values, over real gRPC on both databases: the catalogue's norm
shares, the what-if (EstimateSupply) equal to what a negotiation then covers, and the
coalition's counter-offers on the use declaration taken by the lab SDK's auto-negotiator
within its limits."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from coalition import norms
from coalition.client import Client, NegotiationStep, ServerError
from coalition.norms import DeclarationLimits
from coalition.strategy import ConcessionStrategy
from coalition.v1 import access_pb2, negotiation_pb2, norms_pb2, terms_pb2
from coalition_server.config import Settings

from . import builders
from .world import Lab, Member, lab, member, move, open_negotiation

USD = 1_000_000
STATE = negotiation_pb2
CODE = grpc.StatusCode
OPEN = terms_pb2.MODEL_RELEASE_OPEN_WEIGHTS
CLOSED = terms_pb2.MODEL_RELEASE_CLOSED
NO_MILITARY = norms.make_norm(
    "prohibited-use", norms_pb2.NORM_STANCE_HARD, {"domains": ["military"]}
)


def open_or_pay(premium: int) -> norms_pb2.Norm:
    return norms.make_norm(
        "model-release",
        norms_pb2.NORM_STANCE_PRICED,
        {"release": "open-weights"},
        premium=terms_pb2.Money(currency_code="USD", micros=premium),
    )


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """Small groups shown (k = 2), and a coalition that opens at its reservation, so a lab
    offering the reservation is taken at once."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "catalogue:\n  minimum_group_size: 2\nnegotiation:\n  aspiration_multiplier: 1.0\n"
    )
    return dataclasses.replace(settings, policy_file=policy)


async def members(
    make_client: Callable[..., Client], name: str, count: int, *held: norms_pb2.Norm
) -> list[Member]:
    """``count`` members, each with two items consented for training at a floor of 1 USD
    per item, holding ``held``."""
    out = []
    for n in range(count):
        m = await member(make_client, f"{name} {n}")
        ids = await m.add([f"{name} {n} a".encode(), f"{name} {n} b".encode()])
        token = builders.consent_token(item_ids=ids, purchase_floor=USD)
        token.norms.extend(held)
        await m.grant(token)
        out.append(m)
    return out


def declaration(**fields: object) -> terms_pb2.UseDeclaration:
    base: dict[str, object] = {"model_release": CLOSED, "jurisdictions": ["DE"]}
    base.update(fields)
    return terms_pb2.UseDeclaration(**base)  # type: ignore[arg-type]


def licence(price: int, use: terms_pb2.UseDeclaration) -> terms_pb2.LicenceTerms:
    terms = builders.licence_terms(price=price)
    terms.declaration.CopyFrom(use)
    return terms


async def agreed_items(acme: Lab, terms: terms_pb2.LicenceTerms) -> int | None:
    """Open at ``terms``; the covered item count if the coalition accepts at once."""
    opened = await open_negotiation(acme, terms)
    if opened.negotiation.state != STATE.NEGOTIATION_STATE_AGREED:
        return None
    draft = access_pb2.Agreement.FromString(opened.negotiation.agreement_draft)
    assert draft.terms == terms
    return draft.covered_item_count


async def test_the_what_if_equals_what_the_negotiation_covers(
    make_client: Callable[..., Client],
) -> None:
    await members(make_client, "plain", 3)
    await members(make_client, "pacifist", 2, NO_MILITARY)
    await members(make_client, "open", 2, open_or_pay(2 * USD))
    acme = await lab(make_client)
    military = declaration(application_domains=["military"])
    estimate = await acme.client.estimate_supply(licence(0, military))

    # Ten items are eligible (the pacifists' four never are): six at 1, four at 1 + 2.
    assert estimate.minimum_group_size == 2
    assert estimate.currency_code == "USD"
    assert [(p.price_per_item_micros, p.item_count, p.member_count) for p in estimate.supply] == [
        (USD, 6, 3),
        (3 * USD, 10, 5),
    ]
    assert estimate.quorum_items == 5
    assert estimate.HasField("reservation_price_micros")
    reservation = estimate.reservation_price_micros
    assert (reservation, estimate.covered_at_reservation) == (USD, 6)
    changes = {c.norm_id: c for c in estimate.changes}
    assert [c.norm_id for c in estimate.changes] == ["prohibited-use", "model-release"]
    assert (
        changes["prohibited-use"].more_items_at_any_price,
        changes["prohibited-use"].more_items_at_reservation,
    ) == (4, 4)
    assert changes["prohibited-use"].declaration == declaration()
    assert (
        changes["model-release"].more_items_at_any_price,
        changes["model-release"].more_items_at_reservation,
    ) == (0, 4)

    # The coalition takes the reservation at once and covers what the what-if said ...
    assert await agreed_items(acme, licence(reservation, military)) == 6
    # ... and not a micro less.
    below = await open_negotiation(acme, licence(reservation - 1, military))
    assert below.negotiation.state == STATE.NEGOTIATION_STATE_OFFERED
    # Every point of the curve, priced norms' premiums included, is what a deal at that
    # price covers (each opening comes from a new lab: the first lab's deal is agreed).
    for point in estimate.supply:
        buyer = await lab(make_client, f"buyer at {point.price_per_item_micros}")
        covered = await agreed_items(buyer, licence(point.price_per_item_micros, military))
        assert covered == point.item_count, point
    # Each change, taken at the same price, brings in what the what-if said.
    for change in estimate.changes:
        covered = await agreed_items(acme, licence(reservation, change.declaration))
        assert covered == estimate.covered_at_reservation + change.more_items_at_reservation


async def test_the_catalogue_shows_norm_shares(
    make_client: Callable[..., Client], anonymous: Client
) -> None:
    await members(make_client, "plain", 3)
    await members(make_client, "pacifist", 2, NO_MILITARY)
    await members(make_client, "open", 2, open_or_pay(2 * USD))
    catalogue = await anonymous.catalogue()
    assert catalogue.norm_vocabulary_version == "1"
    shares = {s.norm_id: s for s in catalogue.norm_shares}
    assert list(shares) == list(norms.Vocabulary.load().norms)

    def counts(group: negotiation_pb2.NormShareGroup) -> tuple[bool, int, int]:
        return group.shown, group.member_count, group.item_count

    use = shares["prohibited-use"]
    assert (counts(use.hard), counts(use.priced), counts(use.unheld)) == (
        (True, 2, 4),
        (True, 0, 0),
        (True, 5, 10),
    )
    release = shares["model-release"]
    assert (counts(release.hard), counts(release.priced), counts(release.unheld)) == (
        (True, 0, 0),
        (True, 2, 4),
        (True, 5, 10),
    )


async def test_the_auto_negotiator_takes_a_counter_on_the_declaration_within_its_limits(
    make_client: Callable[..., Client],
) -> None:
    plain = await members(make_client, "plain", 3)
    open_minded = await members(make_client, "open", 3, open_or_pay(5 * USD))
    strategy = ConcessionStrategy(USD // 2, 3 * USD, 1.0, 10, 3600.0)
    closed = licence(0, declaration())

    # A lab that may release open weights: the coalition proposes it, the lab takes it,
    # and the open-minded members' items are in at no premium.
    willing = await lab(make_client, "willing")
    steps: list[NegotiationStep] = []
    done = await willing.client.negotiate_auto(
        closed,
        strategy,
        on_step=steps.append,
        limits=DeclarationLimits(model_releases=frozenset({OPEN})),
    )
    assert done.state == STATE.NEGOTIATION_STATE_FINALIZED
    offer = next(s for s in steps if s.by == "coalition" and s.kind == "offer")
    assert offer.changes == ("model_release: closed -> open-weights",)
    assert done.current_terms.declaration.model_release == OPEN
    draft = access_pb2.Agreement.FromString(done.agreement_draft)
    assert set(draft.covered_item_ids) == {i for m in plain + open_minded for i in m.contents}
    assert draft.terms.price_per_item.micros <= strategy.reservation_micros

    # A lab that may not: it counters with its own declaration, never takes the change,
    # and its deal covers only the plain members.
    unwilling = await lab(make_client, "unwilling")
    steps = []
    done = await unwilling.client.negotiate_auto(closed, strategy, on_step=steps.append)
    assert done.state == STATE.NEGOTIATION_STATE_FINALIZED
    assert any(s.by == "coalition" and s.changes for s in steps)
    assert done.current_terms.declaration.model_release == CLOSED
    draft = access_pb2.Agreement.FromString(done.agreement_draft)
    assert set(draft.covered_item_ids) == {i for m in plain for i in m.contents}


async def test_a_lab_may_counter_with_the_declaration_the_coalition_proposed(
    make_client: Callable[..., Client],
) -> None:
    """The coalition's offer on the declaration is an ordinary move: the lab can take it
    by hand, accepting the amended terms."""
    await members(make_client, "pacifist", 3, NO_MILITARY)
    acme = await lab(make_client)
    opened = await open_negotiation(
        acme, licence(5 * USD, declaration(application_domains=["military"]))
    )
    # No quorum is possible while the lab declares military use; dropping it is.
    negotiation = opened.negotiation
    assert negotiation.state == STATE.NEGOTIATION_STATE_OFFERED
    assert negotiation.current_terms.declaration == declaration()
    assert negotiation.current_terms.price_per_item.micros == 5 * USD
    accepted = await move(
        acme, negotiation.negotiation_id, negotiation.round + 1, STATE.MOVE_KIND_ACCEPT
    )
    assert accepted.negotiation.state == STATE.NEGOTIATION_STATE_AGREED
    draft = access_pb2.Agreement.FromString(accepted.negotiation.agreement_draft)
    assert draft.covered_item_count == 6
    assert draft.terms.declaration == declaration()


@pytest.mark.parametrize(
    ("use", "reason"),
    [
        (None, "MISSING_DECLARATION_FIELD"),
        (terms_pb2.UseDeclaration(jurisdictions=["DE"]), "MISSING_DECLARATION_FIELD"),
        (declaration(jurisdictions=[]), "MISSING_DECLARATION_FIELD"),
        (declaration(application_domains=["piracy"]), "BAD_DECLARATION_FIELD"),
        (declaration(jurisdictions=["FR", "DE"]), "BAD_DECLARATION_FIELD"),
        (declaration(public_benefit_share_basis_points=10), "MISSING_DECLARATION_FIELD"),
    ],
)
async def test_estimate_supply_refuses_bad_declarations(
    make_client: Callable[..., Client], use: terms_pb2.UseDeclaration | None, reason: str
) -> None:
    acme = await lab(make_client)
    terms = builders.licence_terms()
    if use is not None:
        terms.declaration.CopyFrom(use)
    with pytest.raises(ServerError) as refused:
        await acme.client.estimate_supply(terms)
    assert (refused.value.code, refused.value.reason) == (CODE.INVALID_ARGUMENT, reason)


async def test_estimate_supply_is_for_labs(
    make_client: Callable[..., Client], anonymous: Client
) -> None:
    terms = licence(0, declaration())
    ada = await member(make_client)
    with pytest.raises(ServerError) as not_a_lab:
        await ada.client.estimate_supply(terms)
    assert (not_a_lab.value.code, not_a_lab.value.reason) == (
        CODE.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )
    with pytest.raises(ServerError) as unsigned:
        await anonymous.call(
            "/coalition.v1.NegotiationService/EstimateSupply",
            negotiation_pb2.EstimateSupplyRequest(terms=terms),
            negotiation_pb2.EstimateSupplyResponse,
            sign=False,
        )
    assert unsigned.value.code == CODE.UNAUTHENTICATED
    acme = await lab(make_client)
    no_purpose = licence(0, declaration())
    no_purpose.ClearField("purposes")
    with pytest.raises(ServerError) as bad_terms:
        await acme.client.estimate_supply(no_purpose)
    assert bad_terms.value.reason == "MISSING_PURPOSES"
    # Another currency than the coalition's is refused, as in an opening.
    euros = licence(0, declaration())
    euros.price_per_item.currency_code = "EUR"
    with pytest.raises(ServerError) as bad_currency:
        await acme.client.estimate_supply(euros)
    assert bad_currency.value.reason == "BAD_CURRENCY"
    # An empty pool: nothing to show, and no error.
    empty = await acme.client.estimate_supply(terms)
    assert (list(empty.supply), empty.HasField("reservation_price_micros")) == ([], False)
