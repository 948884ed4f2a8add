"""ExportAgreement over real gRPC on both databases: a logged agreement, with the lab's use
declaration, as ODRL 2.2 JSON-LD that a real JSON-LD processor reads without loss."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest

from coalition.client import Client, ServerError
from coalition_server.agreements import conclude_agreement
from coalition_server.server import CoalitionServer
from tests.domain.test_exports import (
    V,
    assert_lossless_json_ld,
    full_declaration,
    one,
    policy_node,
)

from . import builders
from .world import lab, member


async def test_an_agreement_exports_with_its_declaration(
    make_client: Callable[..., Client], anonymous: Client, server: CoalitionServer
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one", b"two"])
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    terms = builders.licence_terms()
    terms.declaration.CopyFrom(full_declaration())
    agreement_id, _ = await conclude_agreement(
        server.context, server.parties, builders.agreement(acme.key, ids, terms)
    )
    # Anyone may ask: no key, no signature.
    response = await anonymous.export_agreement(agreement_id)
    assert response.media_type == "application/ld+json"
    document = json.loads(response.document)
    assert_lossless_json_ld(document)
    node = policy_node(document)
    assert one(node, V + "useDeclaration")
    assert response.index > 0


@pytest.mark.parametrize(
    ("agreement_id", "code", "reason"),
    [
        ("not an id", grpc.StatusCode.INVALID_ARGUMENT, "BAD_AGREEMENT_ID"),
        ("0" * 32, grpc.StatusCode.NOT_FOUND, "AGREEMENT_NOT_FOUND"),
    ],
)
async def test_unknown_or_malformed_agreement_ids_are_refused(
    anonymous: Client, agreement_id: str, code: grpc.StatusCode, reason: str
) -> None:
    with pytest.raises(ServerError) as refused:
        await anonymous.export_agreement(agreement_id)
    assert (refused.value.code, refused.value.reason) == (code, reason)
