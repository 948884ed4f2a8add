"""Members' values over real gRPC on both databases: a hard norm keeps a member's items out
of any deal whose use declaration breaks it; a priced norm is waived only for its premium."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from coalition import norms
from coalition.client import Client, ServerError
from coalition.v1 import access_pb2, negotiation_pb2, norms_pb2, terms_pb2

from . import builders
from .world import Lab, Member, lab, member, move, open_negotiation

USD = 1_000_000
STATE = negotiation_pb2


def _declaration(**fields: object) -> terms_pb2.UseDeclaration:
    declaration = terms_pb2.UseDeclaration(
        model_release=terms_pb2.MODEL_RELEASE_CLOSED, jurisdictions=["DE"]
    )
    for name, value in fields.items():
        field = getattr(declaration, name)
        if isinstance(value, list):
            field.extend(value)
        else:
            setattr(declaration, name, value)
    return declaration


async def _member(
    make_client: Callable[..., Client], name: str, *member_norms: norms_pb2.Norm
) -> Member:
    m = await member(make_client, name)
    ids = await m.add([f"{name} 1".encode(), f"{name} 2".encode()])
    token = builders.consent_token(item_ids=ids, purchase_floor=USD)
    token.norms.extend(member_norms)
    await m.grant(token)
    return m


async def _covered(acme_client: Lab, terms: terms_pb2.LicenceTerms) -> tuple[set[str], int]:
    """Open at ``terms``, accept the coalition's first offer; the drafted covered set."""
    opened = await open_negotiation(acme_client, terms)
    negotiation = opened.negotiation
    if negotiation.state == STATE.NEGOTIATION_STATE_OFFERED:
        negotiation = (
            await move(
                acme_client,
                negotiation.negotiation_id,
                negotiation.round + 1,
                STATE.MOVE_KIND_ACCEPT,
            )
        ).negotiation
    assert negotiation.state == STATE.NEGOTIATION_STATE_AGREED, negotiation
    draft = access_pb2.Agreement.FromString(negotiation.agreement_draft)
    return set(draft.covered_item_ids), draft.terms.price_per_item.micros


async def _three_members(make_client: Callable[..., Client]) -> tuple[Member, Member, Member]:
    """A pacifist (hard: no military use), a member without norms, and one who waives
    closed weights for a premium of 3 USD; each with two items at a 1 USD floor."""
    pacifist = await _member(
        make_client,
        "pacifist",
        norms.make_norm("prohibited-use", norms_pb2.NORM_STANCE_HARD, {"domains": ["military"]}),
    )
    plain = await _member(make_client, "plain")
    open_minded = await _member(
        make_client,
        "open",
        norms.make_norm(
            "model-release",
            norms_pb2.NORM_STANCE_PRICED,
            {"release": "open-weights"},
            premium=terms_pb2.Money(currency_code="USD", micros=3 * USD),
        ),
    )
    return pacifist, plain, open_minded


async def test_a_hard_norm_keeps_items_out_and_a_priced_norm_collects_its_premium(
    make_client: Callable[..., Client],
) -> None:
    pacifist, plain, open_minded = await _three_members(make_client)
    acme = await lab(make_client)
    # A closed model for military use: the pacifist's items are never covered, whatever
    # the price; the open-weights member's are covered only once the premium is paid.
    terms = builders.licence_terms(price=10 * USD)
    terms.declaration.CopyFrom(_declaration(application_domains=["military"]))
    covered, price = await _covered(acme, terms)
    assert not covered & set(pacifist.contents)
    assert set(plain.contents) <= covered
    assert price >= 4 * USD  # the open-weights member's floor (1) plus premium (3)
    assert set(open_minded.contents) <= covered
    # An open-weights model outside the military: everyone is in, no premium is owed.
    peaceful = builders.licence_terms(price=10 * USD)
    peaceful.declaration.CopyFrom(_declaration(model_release=terms_pb2.MODEL_RELEASE_OPEN_WEIGHTS))
    other = await lab(make_client, "other")
    covered, _ = await _covered(other, peaceful)
    assert covered == {i for m in (pacifist, plain, open_minded) for i in m.contents}


async def test_terms_without_a_declaration_break_every_norm(
    make_client: Callable[..., Client],
) -> None:
    # A lab that declares nothing promises nothing: the hard norm keeps its member out and
    # the priced norm is still owed its premium (no escape from members' values by silence).
    pacifist, plain, open_minded = await _three_members(make_client)
    acme = await lab(make_client)
    terms = builders.licence_terms(price=10 * USD)
    assert not terms.HasField("declaration")
    covered, price = await _covered(acme, terms)
    assert not covered & set(pacifist.contents)
    assert set(plain.contents) <= covered
    assert set(open_minded.contents) <= covered
    assert price >= 4 * USD  # floor (1) plus the premium (3) the silence owes


async def test_bad_norms_and_declarations_are_refused(
    make_client: Callable[..., Client],
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"x"])
    unknown = builders.consent_token(item_ids=ids)
    unknown.norms.append(norms.make_norm("no-such-norm", norms_pb2.NORM_STANCE_HARD, {}))
    with pytest.raises(ServerError) as refused:
        await alice.grant(unknown)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_NORM",
    )
    priced_without_premium = builders.consent_token(item_ids=ids)
    priced_without_premium.norms.append(
        norms.make_norm("model-release", norms_pb2.NORM_STANCE_PRICED, {"release": "open-weights"})
    )
    with pytest.raises(ServerError) as no_premium:
        await alice.grant(priced_without_premium)
    assert no_premium.value.reason == "MISSING_PREMIUM"
    acme = await lab(make_client)
    terms = builders.licence_terms()
    terms.declaration.CopyFrom(terms_pb2.UseDeclaration(jurisdictions=["DE"]))
    with pytest.raises(ServerError) as incomplete:
        await open_negotiation(acme, terms)
    assert incomplete.value.reason == "MISSING_DECLARATION_FIELD"
