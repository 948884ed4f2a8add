"""A deal is re-judged when its vote decides it, over real gRPC on both databases: an item
left consented only under a norm the use breaks ends the deal, and the deciding ballot
still counts (it is not refused along with the agreement)."""

from __future__ import annotations

from collections.abc import Callable

from coalition import norms
from coalition.client import Client
from coalition.v1 import access_pb2, negotiation_pb2, norms_pb2

from . import builders
from .test_ballot_reasons import USD, _vote, ratifying
from .world import lab as new_lab
from .world import member, move, open_negotiation, sign_agreement

STATE = negotiation_pb2
__all__ = ["ratifying"]  # the fixture, shared with the ballot tests


async def test_a_deal_whose_item_lost_its_permitting_token_ends_at_the_deciding_ballot(
    ratifying: Callable[..., Client],
) -> None:
    pacifist = await member(ratifying, "pacifist")
    ids = await pacifist.add([b"p a", b"p b"])
    permissive = await pacifist.grant(builders.consent_token(item_ids=ids, purchase_floor=USD))
    strict = builders.consent_token(item_ids=ids, purchase_floor=USD)
    strict.norms.append(
        norms.make_norm("prohibited-use", norms_pb2.NORM_STANCE_HARD, {"domains": ["military"]})
    )
    await pacifist.grant(strict)
    voters = []
    for i in range(2):
        m = await member(ratifying, f"member {i}")
        m_ids = await m.add([f"{i} a".encode(), f"{i} b".encode()])
        await m.grant(builders.consent_token(item_ids=m_ids, purchase_floor=USD))
        voters.append(m)
    acme = await new_lab(ratifying)
    # No declaration: it breaks the strict token's norm, so only the permissive token
    # covers the pacifist's items.
    opened = await open_negotiation(acme, builders.licence_terms(price=USD))
    nid = opened.negotiation.negotiation_id
    accepted = await move(acme, nid, opened.negotiation.round + 1, STATE.MOVE_KIND_ACCEPT)
    draft = access_pb2.Agreement.FromString(accepted.negotiation.agreement_draft)
    assert set(ids) <= set(draft.covered_item_ids)
    signed = await sign_agreement(acme, accepted.negotiation.agreement_draft)
    assert signed.negotiation.state == STATE.NEGOTIATION_STATE_RATIFYING
    # The pacifist withdraws the permissive token; the strict one still names the items.
    await pacifist.withdraw(builders.withdrawal(consent_id=permissive))
    await _vote(voters[0], nid, True)
    deciding = await _vote(voters[1], nid, True)  # accepted, not refused with the deal
    assert deciding.receipt.index > 0
    ended = await acme.client.negotiation(nid)
    assert ended.state == STATE.NEGOTIATION_STATE_TERMINATED
    assert not ended.agreement_id
    agreements = [a async for a in acme.client.agreements()]
    assert agreements == []
