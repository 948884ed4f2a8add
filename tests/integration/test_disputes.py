"""Disputes over real gRPC on both databases: a covered member files, the agreement's lab
answers once, anyone reads them; every refusal writes nothing; the ledger alone shows them
to an auditor (replay and compliance)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import grpc
import pytest

from coalition import dsse, merkle
from coalition.audit import LedgerReplay
from coalition.checkpoint import verify_checkpoint
from coalition.client import Client, ServerError
from coalition.compliance import DisputeState, compliance_report
from coalition.keys import SigningKey
from coalition.statements import sign_statement, statement_id
from coalition.v1 import consent_pb2, disputes_pb2
from coalition_server.server import CoalitionServer

from . import builders
from .helpers import row_counts, verifier
from .world import Lab, Member, agree, lab, member

CODE = grpc.StatusCode
DISPUTE = "/coalition.v1.DisputeService/"


def _dispute(
    agreement_id: str,
    norm_ids: Sequence[str] = ("prohibited-use",),
    fields: Sequence[str] = ("application_domains",),
    text: str = "Their model is sold for mass surveillance.",
) -> disputes_pb2.Dispute:
    return disputes_pb2.Dispute(
        agreement_id=agreement_id,
        norm_ids=list(norm_ids),
        declaration_fields=list(fields),
        text=text,
        created_time=builders.ts(builders.now()),
        nonce=os.urandom(16),
    )


def _response(
    dispute_id: str, text: str = "We sell to no such customer."
) -> disputes_pb2.DisputeResponse:
    return disputes_pb2.DisputeResponse(
        dispute_id=dispute_id,
        text=text,
        created_time=builders.ts(builders.now()),
        nonce=os.urandom(16),
    )


async def _file(
    client: Client, key: SigningKey, statement: disputes_pb2.Dispute, request_id: str = ""
) -> disputes_pb2.FileDisputeResponse:
    """A raw FileDispute call: the statement exactly as given (no SDK canonicalisation)."""
    return await client.call(
        DISPUTE + "FileDispute",
        disputes_pb2.FileDisputeRequest(
            dispute=sign_statement(statement, key).to_proto(), request_id=request_id
        ),
        disputes_pb2.FileDisputeResponse,
        sign=True,
    )


async def _respond(
    client: Client, key: SigningKey, statement: disputes_pb2.DisputeResponse
) -> disputes_pb2.RespondToDisputeResponse:
    return await client.call(
        DISPUTE + "RespondToDispute",
        disputes_pb2.RespondToDisputeRequest(response=sign_statement(statement, key).to_proto()),
        disputes_pb2.RespondToDisputeResponse,
        sign=True,
    )


async def _covered(
    make_client: Callable[..., Client], server: CoalitionServer
) -> tuple[Member, Member, Lab, Lab, str]:
    """Alice's items are covered by acme's agreement; Bob's are not; rival is another lab."""
    alice = await member(make_client, "alice")
    ids = await alice.add([b"alice one", b"alice two"])
    await alice.grant(builders.consent_token(item_ids=ids))
    bob = await member(make_client, "bob")
    bob_ids = await bob.add([b"bob one"])
    await bob.grant(builders.consent_token(item_ids=bob_ids))
    acme = await lab(make_client, "acme")
    rival = await lab(make_client, "rival")
    agreement_id = await agree(server, acme, sorted(ids))
    return alice, bob, acme, rival, agreement_id


async def test_a_covered_member_disputes_and_the_lab_answers_once(
    make_client: Callable[..., Client],
    server: CoalitionServer,
    anonymous: Client,
    db_url: str,
) -> None:
    alice, _, acme, _, agreement_id = await _covered(make_client, server)
    filed = await alice.client.file_dispute(
        agreement_id,
        norm_ids=["prohibited-use", "jurisdiction"],  # the SDK sends them in order
        declaration_fields=["jurisdictions"],
        text="Processed outside the declared jurisdictions.",
        request_id="dispute-1",
    )
    log = await verifier(anonymous)
    assert filed.receipt.index > 0
    # A retry with the same request_id gets the first answer and appends nothing.
    statement = _dispute(agreement_id)
    first = await _file(alice.client, alice.key, statement, request_id="dispute-2")
    before = await row_counts(db_url)
    again = await _file(alice.client, alice.key, statement, request_id="dispute-2")
    assert again == first
    assert await row_counts(db_url) == before

    record = await anonymous.dispute(filed.dispute_id)  # public, no key
    assert record.state == disputes_pb2.DISPUTE_STATE_OPEN
    assert (record.agreement_id, record.lab_key_id, record.member_key_id) == (
        agreement_id,
        acme.key.key_id,
        alice.key.key_id,
    )
    assert record.index == filed.receipt.index
    envelope = dsse.Envelope.from_proto(record.dispute)
    dsse.verify(envelope, alice.key.public_key)  # verbatim: anyone re-checks the signature
    assert statement_id(envelope) == filed.dispute_id
    statement = disputes_pb2.Dispute.FromString(envelope.payload)
    assert list(statement.norm_ids) == ["jurisdiction", "prohibited-use"]

    answered = await acme.client.respond_to_dispute(filed.dispute_id, "We process in DE only.")
    record = await anonymous.dispute(filed.dispute_id)
    assert record.state == disputes_pb2.DISPUTE_STATE_ANSWERED
    assert record.response_index == answered.receipt.index
    dsse.verify(dsse.Envelope.from_proto(record.response), acme.key.public_key)
    assert record.response_time.ToDatetime() >= record.filed_time.ToDatetime()

    before = await row_counts(db_url)
    with pytest.raises(ServerError) as twice:
        await acme.client.respond_to_dispute(filed.dispute_id, "And again.")
    assert (twice.value.code, twice.value.reason) == (CODE.ALREADY_EXISTS, "DISPUTE_ANSWERED")
    assert await row_counts(db_url) == before

    # The ledger alone tells an auditor the same: the replay accepts both statements, and
    # the compliance report shows the dispute answered, against acme's agreement.
    head = await anonymous.checkpoint()
    checkpoint = verify_checkpoint(head.checkpoint, log, log.name)
    replay = LedgerReplay()
    leaves = []
    async for entry in anonymous.entries(0, checkpoint.size):
        replay.feed(entry.index, entry.leaf, leaf_hash=merkle.leaf_hash(entry.leaf))
        leaves.append((entry.index, bytes(entry.leaf)))
    assert replay.finish(checkpoint).kinds["Dispute"] == 2
    report = compliance_report(leaves)
    status, still_open = report.disputes
    assert (still_open.dispute_id, still_open.state) == (first.dispute_id, DisputeState.OPEN)
    assert (status.dispute_id, status.state, status.response_index) == (
        filed.dispute_id,
        DisputeState.ANSWERED,
        answered.receipt.index,
    )
    assert report.lab(acme.key.key_id) is not None
    assert report.lab(acme.key.key_id).disputes == 2  # type: ignore[union-attr]
    (row,) = report.agreement_disputes
    assert (row.agreement_id, row.open, row.answered) == (agreement_id, 1, 1)
    assert report.ok  # an allegation is not a violation


async def test_coverage_outlives_a_withdrawal(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    # A member who withdrew may still hold the lab to what its agreement covered.
    alice, _, _, _, agreement_id = await _covered(make_client, server)
    await alice.withdraw(
        consent_pb2.Withdrawal(
            everything=True, created_time=builders.ts(builders.now()), nonce=os.urandom(16)
        )
    )
    filed = await alice.client.file_dispute(
        agreement_id, declaration_fields=["withdrawal_commitments"]
    )
    assert filed.dispute_id


async def test_dispute_refusals_write_nothing(
    make_client: Callable[..., Client], server: CoalitionServer, db_url: str
) -> None:
    alice, bob, acme, rival, agreement_id = await _covered(make_client, server)
    filed = await alice.client.file_dispute(agreement_id, norm_ids=["occupation"])
    dispute_id = filed.dispute_id
    a, k = alice.client, alice.key
    cases = [
        # Who may file: a member the agreement covers, about an agreement that exists.
        (_file(bob.client, bob.key, _dispute(agreement_id)), CODE.PERMISSION_DENIED, "NOT_COVERED"),
        (
            _file(acme.client, acme.key, _dispute(agreement_id)),
            CODE.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
        ),
        (_file(a, k, _dispute("0" * 32)), CODE.NOT_FOUND, "AGREEMENT_NOT_FOUND"),
        (_file(a, k, _dispute("not-an-id")), CODE.INVALID_ARGUMENT, "BAD_AGREEMENT_ID"),
        # What it may say: known, ordered norm ids and fields; something specific; short text.
        (
            _file(a, k, _dispute(agreement_id, ["no-such-norm"])),
            CODE.INVALID_ARGUMENT,
            "UNKNOWN_NORM",
        ),
        (
            _file(a, k, _dispute(agreement_id, ["prohibited-use", "occupation"])),
            CODE.INVALID_ARGUMENT,
            "BAD_NORM_IDS",
        ),
        (
            _file(a, k, _dispute(agreement_id, ["occupation", "occupation"])),
            CODE.INVALID_ARGUMENT,
            "BAD_NORM_IDS",
        ),
        (
            _file(a, k, _dispute(agreement_id, fields=["price"])),
            CODE.INVALID_ARGUMENT,
            "UNKNOWN_DECLARATION_FIELD",
        ),
        (
            _file(a, k, _dispute(agreement_id, fields=["occupations", "jurisdictions"])),
            CODE.INVALID_ARGUMENT,
            "BAD_DECLARATION_FIELDS",
        ),
        (_file(a, k, _dispute(agreement_id, [], [])), CODE.INVALID_ARGUMENT, "MISSING_ALLEGATION"),
        (_file(a, k, _dispute(agreement_id, text="x" * 1001)), CODE.INVALID_ARGUMENT, "BAD_TEXT"),
        (_file(a, k, _dispute(agreement_id, text="a\x1b[2Jb")), CODE.INVALID_ARGUMENT, "BAD_TEXT"),
        (_file(a, k, _dispute(agreement_id, text="a\u202eb")), CODE.INVALID_ARGUMENT, "BAD_TEXT"),
        # Who may answer: the agreement's lab, with something to say, to a real dispute.
        (
            _respond(rival.client, rival.key, _response(dispute_id)),
            CODE.PERMISSION_DENIED,
            "NOT_YOUR_AGREEMENT",
        ),
        (_respond(a, k, _response(dispute_id)), CODE.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"),
        (
            _respond(acme.client, acme.key, _response("f" * 32)),
            CODE.NOT_FOUND,
            "DISPUTE_NOT_FOUND",
        ),
        (
            _respond(acme.client, acme.key, _response("F" * 32)),
            CODE.INVALID_ARGUMENT,
            "BAD_DISPUTE_ID",
        ),
        (
            _respond(acme.client, acme.key, _response(dispute_id, " \n")),
            CODE.INVALID_ARGUMENT,
            "MISSING_TEXT",
        ),
    ]
    for call, code, reason in cases:
        before = await row_counts(db_url)
        with pytest.raises(ServerError) as refused:
            await call
        assert (refused.value.code, refused.value.reason) == (code, reason)
        assert await row_counts(db_url) == before
    # Line feeds and tabs are text, and 1000 characters is the limit, not beyond it.
    body = "line one\n\tline two " + "x" * (1000 - 19)
    assert len(body) == 1000
    await _respond(acme.client, acme.key, _response(dispute_id, body))


async def test_list_disputes_filters_and_paginates(
    make_client: Callable[..., Client], server: CoalitionServer, anonymous: Client
) -> None:
    alice, _, _, rival, agreement_id = await _covered(make_client, server)
    carol = await member(make_client, "carol")
    carol_ids = await carol.add([b"carol one"])
    await carol.grant(builders.consent_token(item_ids=carol_ids))
    other_agreement = await agree(server, rival, carol_ids)
    ids = [
        (await alice.client.file_dispute(agreement_id, norm_ids=["occupation"])).dispute_id,
        (await carol.client.file_dispute(other_agreement, norm_ids=["derivatives"])).dispute_id,
        (await alice.client.file_dispute(agreement_id, norm_ids=["model-release"])).dispute_id,
    ]

    async def listed(**filters: str) -> list[str]:
        return [r.dispute_id async for r in anonymous.disputes(page_size=1, **filters)]

    assert await listed() == ids  # ledger order, one page at a time
    assert await listed(agreement_id=agreement_id) == [ids[0], ids[2]]
    assert await listed(lab_key_id=rival.key.key_id) == [ids[1]]
    assert await listed(member_key_id=alice.key.key_id) == [ids[0], ids[2]]
    assert await listed(agreement_id=agreement_id, member_key_id=carol.key.key_id) == []
    first = await anonymous.call(
        DISPUTE + "ListDisputes",
        disputes_pb2.ListDisputesRequest(page_size=2),
        disputes_pb2.ListDisputesResponse,
        sign=False,
    )
    assert [r.dispute_id for r in first.disputes] == ids[:2]
    assert first.next_page_token
    for request, reason in (
        (disputes_pb2.ListDisputesRequest(lab_key_id="nope"), "BAD_KEY_ID"),
        (disputes_pb2.ListDisputesRequest(agreement_id="nope"), "BAD_AGREEMENT_ID"),
        (disputes_pb2.ListDisputesRequest(page_token="nope"), "BAD_PAGE_TOKEN"),
    ):
        with pytest.raises(ServerError) as refused:
            await anonymous.call(
                DISPUTE + "ListDisputes", request, disputes_pb2.ListDisputesResponse, sign=False
            )
        assert (refused.value.code, refused.value.reason) == (CODE.INVALID_ARGUMENT, reason)
    with pytest.raises(ServerError) as missing:
        await anonymous.dispute("0" * 32)
    assert (missing.value.code, missing.value.reason) == (CODE.NOT_FOUND, "DISPUTE_NOT_FOUND")
