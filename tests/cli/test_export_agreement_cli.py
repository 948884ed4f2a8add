"""``coalition audit export-agreement``: an agreement as ODRL JSON-LD, by anyone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from coalition.client import Client
from coalition_server.agreements import conclude_agreement
from coalition_server.server import CoalitionServer
from tests.cli.helpers import Cli, json_out
from tests.domain.test_exports import V, full_declaration, one, policy_node
from tests.integration import builders
from tests.integration.world import lab, member


async def test_export_agreement_prints_writes_and_refuses(
    cli: Cli, make_client: Callable[..., Client], server: CoalitionServer, tmp_path: Path
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one"])
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    terms = builders.licence_terms()
    terms.declaration.CopyFrom(full_declaration())
    agreement_id, _ = await conclude_agreement(
        server.context, server.parties, builders.agreement(acme.key, ids, terms)
    )
    printed = await cli("audit", "export-agreement", agreement_id)
    assert printed.exit_code == 0, printed.output
    assert one(policy_node(json.loads(printed.stdout)), V + "useDeclaration")
    out = tmp_path / "agreement.jsonld"
    written = await cli("audit", "export-agreement", agreement_id, "--out", str(out))
    assert written.exit_code == 0, written.output
    assert json.loads(out.read_text()) == json.loads(printed.stdout)
    data = json_out(await cli("audit", "export-agreement", agreement_id, "--json"))
    assert data["media_type"] == "application/ld+json"
    assert data["index"] > 0
    missing = await cli("audit", "export-agreement", "0" * 32)
    assert missing.exit_code != 0
    assert "AGREEMENT_NOT_FOUND" in missing.output
