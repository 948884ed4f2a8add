"""Consent through the SDK: grant (ready tokens and keywords), list, export, withdraw, and the
public state verified offline, including against tampered evidence."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import grpc
import pytest

from coalition import consent_state as cs
from coalition.client import Client, ServerError, consent_token, micros, price_floor, purpose
from coalition.errors import CoalitionError, NoteError, ProofError, VerificationError
from coalition.keys import SigningKey
from coalition.note import NoteVerifier
from coalition.v1 import consent_pb2, items_pb2, terms_pb2
from tests.sdk.conftest import MakeParty

FLOORS = [price_floor("purchase", 500_000)]


async def items_of(member: Client, *contents: bytes, tags: tuple[str, ...] = ()) -> list[str]:
    response = await member.register_items(
        [(hashlib.sha256(c).digest(), len(c), "text/plain", tags) for c in contents]
    )
    for item, data in zip(response.items, contents, strict=True):
        await member.upload(item.item_id, data)
    return [i.item_id for i in response.items]


async def verifier_of(client: Client) -> NoteVerifier:
    return NoteVerifier.parse((await client.log_info()).verifier_key)


def test_vocabulary_helpers() -> None:
    assert purpose("train-genai") == terms_pb2.PURPOSE_TRAIN_GENAI
    assert purpose(terms_pb2.PURPOSE_SEARCH) == terms_pb2.PURPOSE_SEARCH
    with pytest.raises(CoalitionError):
        purpose("mind-reading")
    assert micros("1.5") == 1_500_000
    assert micros(3) == 3_000_000
    with pytest.raises(CoalitionError):
        micros("0.0000001")
    sub = price_floor("subscription", 10, period=timedelta(days=30))
    assert sub.period.seconds == 30 * 86400
    token = consent_token(tag="x", purposes=["search"], floors=FLOORS, valid_for=timedelta(days=2))
    assert token.items.tag == "x"
    assert len(token.nonce) == 16
    assert token.not_after.seconds - token.created_time.seconds == 2 * 86400
    with pytest.raises(CoalitionError):
        consent_token(tag="x", all_items=True, purposes=["search"], floors=FLOORS)


async def test_grant_list_export_and_state(member: Client, anonymous: Client) -> None:
    ids = await items_of(member, b"one", b"two", tags=("poems",))
    by_ids = await member.grant_consent(
        item_ids=ids,
        purposes=["train-ai", "evaluation"],
        floors=[*FLOORS, price_floor("per-use", 1_000)],
        attribution_required=True,
        max_licence_duration=timedelta(days=90),
        max_deletion_deadline=timedelta(days=3),
        excluded_labs=["cd" * 32],
    )
    by_tag = await member.grant_consent(tag="poems", purposes=["search"], floors=FLOORS)
    ready = consent_token(all_items=True, purposes=["ai-input"], floors=FLOORS)
    ready.ClearField("nonce")  # filled in by the SDK
    by_token = await member.grant_consent(ready, request_id="grant-all-1")
    consent_ids = [r.consents[0].consent_id for r in (by_ids, by_tag, by_token)]
    records = [r async for r in member.consents(page_size=2)]
    assert [r.consent_id for r in records] == consent_ids
    assert {r.state for r in records} == {consent_pb2.CONSENT_STATE_GIVEN}
    assert records[0].index == by_ids.receipts[0].index

    odrl = await member.export_consent(consent_ids[0], "odrl")
    assert odrl.media_type == "application/ld+json"
    assert isinstance(json.loads(odrl.document), dict)
    rsl = await member.export_consent(consent_ids[0], consent_pb2.EXPORT_FORMAT_RSL)
    assert rsl.media_type == "application/rsl+xml"
    ElementTree.fromstring(rsl.document)
    with pytest.raises(CoalitionError):
        await member.export_consent(consent_ids[0], "pdf")

    # Public: an anonymous client checks the state offline against the log key.
    verified = await anonymous.verified_consent_state(
        consent_ids[0], member_key=member.key.public_key if member.key else None
    )
    assert verified.state == consent_pb2.CONSENT_STATE_GIVEN
    assert verified.state_name == "given"
    assert verified.token.items.item_ids.item_ids == ids
    assert verified.token_index == records[0].index
    assert verified.withdrawal is None


async def test_withdrawals_of_each_kind(member: Client, anonymous: Client) -> None:
    first, second, third = await items_of(member, b"1", b"2", b"3")
    token_a = await member.grant_consent(item_ids=[first], purposes=["search"], floors=FLOORS)
    token_b = await member.grant_consent(all_items=True, purposes=["search"], floors=FLOORS)
    a_id, b_id = token_a.consents[0].consent_id, token_b.consents[0].consent_id

    # Token A withdrawn: its item is still covered by B, so nothing is shredded.
    response = await member.withdraw(consent_id=a_id, request_id="withdraw-a")
    assert list(response.shredded_item_ids) == []
    state = await anonymous.verified_consent_state(a_id)
    assert state.state == consent_pb2.CONSENT_STATE_WITHDRAWN
    assert state.withdrawal is not None
    assert state.withdrawal.consent_id == a_id
    assert state.withdrawal_index == response.receipt.index

    # Items withdrawn from every token: shredded at once, WITHDRAWN for good.
    by_items = await member.withdraw(item_ids=[second])
    assert list(by_items.shredded_item_ids) == [second]
    assert (await member.item(second)).state == items_pb2.ITEM_STATE_WITHDRAWN

    everything = await member.withdraw(everything=True)
    assert sorted(everything.shredded_item_ids) == sorted([first, third])
    state_b = await anonymous.verified_consent_state(b_id)
    assert state_b.state == consent_pb2.CONSENT_STATE_WITHDRAWN
    assert state_b.withdrawal is not None
    assert state_b.withdrawal.everything
    states = {r.consent_id: r.state async for r in member.consents()}
    assert states == {
        a_id: consent_pb2.CONSENT_STATE_WITHDRAWN,
        b_id: consent_pb2.CONSENT_STATE_WITHDRAWN,
    }

    with pytest.raises(CoalitionError):
        await member.withdraw()
    with pytest.raises(CoalitionError):
        await member.withdraw(consent_id=a_id, everything=True)
    with pytest.raises(ServerError) as error:
        await member.withdraw(consent_id=a_id)
    assert error.value.reason == "CONSENT_NOT_GIVEN"


async def test_grant_refusals(member: Client, make_party: MakeParty) -> None:
    (item,) = await items_of(member, b"mine")
    with pytest.raises(CoalitionError):
        await member.grant_consent(
            consent_token(all_items=True, purposes=["search"], floors=FLOORS), tag="x"
        )
    other = await make_party()
    with pytest.raises(ServerError) as foreign:
        await other.grant_consent(item_ids=[item], purposes=["search"], floors=FLOORS)
    assert foreign.value.reason == "NOT_YOUR_ITEM"
    with pytest.raises(ServerError) as no_period:
        await member.grant_consent(
            all_items=True, purposes=["search"], floors=[price_floor("subscription", 1)]
        )
    assert no_period.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert no_period.value.reason == "BAD_PERIOD"
    with pytest.raises(ServerError) as currency:
        await member.grant_consent(
            all_items=True, purposes=["search"], floors=[price_floor("purchase", 1, currency="EUR")]
        )
    assert currency.value.reason == "BAD_CURRENCY"
    token = await member.grant_consent(all_items=True, purposes=["search"], floors=FLOORS)
    with pytest.raises(ServerError) as withdraw_theirs:
        await other.withdraw(consent_id=token.consents[0].consent_id)
    assert withdraw_theirs.value.reason == "NOT_YOUR_CONSENT"


async def test_consent_state_refuses_tampered_evidence(member: Client, anonymous: Client) -> None:
    (item,) = await items_of(member, b"evidence")
    kept = await member.grant_consent(item_ids=[item], purposes=["search"], floors=FLOORS)
    gone = await member.grant_consent(all_items=True, purposes=["search"], floors=FLOORS)
    kept_id, gone_id = kept.consents[0].consent_id, gone.consents[0].consent_id
    await member.withdraw(consent_id=gone_id)
    verifier = await verifier_of(anonymous)
    good = await anonymous.consent_state(kept_id)
    withdrawn = await anonymous.consent_state(gone_id)
    cs.verify_consent_state(good, verifier, kept_id)
    cs.verify_consent_state(withdrawn, verifier, gone_id)

    def tampered(base: consent_pb2.GetConsentStateResponse) -> consent_pb2.GetConsentStateResponse:
        copy = consent_pb2.GetConsentStateResponse()
        copy.CopyFrom(base)
        return copy

    # The evidence is for another token.
    with pytest.raises(cs.ConsentEvidenceError):
        cs.verify_consent_state(good, verifier, gone_id)
    # A changed leaf is not in the tree.
    bad_leaf = tampered(good)
    leaf = bytes(good.token_entry.leaf)
    bad_leaf.token_entry.leaf = leaf[:-1] + bytes([leaf[-1] ^ 1])  # always a change
    with pytest.raises(ProofError):
        cs.verify_consent_state(bad_leaf, verifier, kept_id)
    # A checkpoint not signed by the log.
    stranger = NoteVerifier("coalition.test/log", SigningKey.generate().public_key)
    with pytest.raises(NoteError):
        cs.verify_consent_state(good, stranger, kept_id)
    # Claimed withdrawn with no withdrawal shown; claimed given with one shown.
    claimed = tampered(good)
    claimed.state = consent_pb2.CONSENT_STATE_WITHDRAWN
    with pytest.raises(cs.ConsentStateMismatchError):
        cs.verify_consent_state(claimed, verifier, kept_id)
    hidden = tampered(withdrawn)
    hidden.state = consent_pb2.CONSENT_STATE_GIVEN
    with pytest.raises(cs.ConsentStateMismatchError):
        cs.verify_consent_state(hidden, verifier, gone_id)
    # Another token's withdrawal does not withdraw this one.
    borrowed = tampered(good)
    borrowed.state = consent_pb2.CONSENT_STATE_WITHDRAWN
    borrowed.withdrawal_entry.CopyFrom(withdrawn.withdrawal_entry)
    borrowed.checkpoint = withdrawn.checkpoint
    borrowed.token_entry.proof[:] = (
        await anonymous.inclusion_proof(
            good.token_entry.index,
            cs.verify_consent_state(withdrawn, verifier, gone_id).checkpoint.size,
        )
    ).proof
    with pytest.raises(cs.ConsentEvidenceError, match="withdraws consent"):
        cs.verify_consent_state(borrowed, verifier, kept_id)
    # Given, long after the token lapsed.
    with pytest.raises(cs.ConsentStateMismatchError):
        cs.verify_consent_state(
            good, verifier, kept_id, now=datetime.now(UTC) + timedelta(days=3650)
        )
    # Signed by someone other than the member we know.
    with pytest.raises(cs.ConsentEvidenceError):
        cs.verify_consent_state(
            good, verifier, kept_id, member_key=SigningKey.generate().public_key
        )
    # Another kind of entry, correctly proven, is not a token.
    size = cs.verify_consent_state(good, verifier, kept_id).checkpoint.size
    registration = await anonymous.inclusion_proof(0, size)
    swapped = tampered(good)
    swapped.token_entry.index = 0
    swapped.token_entry.leaf = registration.leaf
    swapped.token_entry.proof[:] = registration.proof
    with pytest.raises(cs.ConsentEvidenceError) as kind:
        cs.verify_consent_state(swapped, verifier, kept_id)
    assert "PartyRegistration" in str(kind.value)
    assert issubclass(cs.ConsentEvidenceError, VerificationError)
    assert issubclass(cs.ConsentStateMismatchError, VerificationError)
