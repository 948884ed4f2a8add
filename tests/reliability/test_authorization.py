"""The authorisation matrix (issue #7, point 5): every RPC called by every kind of caller.

TABLE pins, for each RPC of the generated descriptors and each caller of CALLERS, exactly
how the call ends: ``OK``, or ``CODE/REASON``. A cell refused with UNAUTHENTICATED or
PERMISSION_DENIED is *refused*; any other cell is *allowed* (it may still fail for a
business reason, e.g. registering a key twice, and that reason is pinned too). A new RPC
without a row, or a row for an RPC that is gone, fails the test.

One world per database (see ``rpcs.build_world``); the cells run in table order, each with
a request built for its caller (the statements inside signed by the caller's key). Cells
that change state were chosen so that they do not change any later cell's answer (e.g. the
lab ends the negotiation only it may move; the contributor withdraws a token nothing else
uses). Every refused cell, whatever its reason, must leave every table's row count as it
was: "nothing is written when a call is refused" (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc

from coalition.v1 import access_pb2, negotiation_pb2
from coalition_server.api.access import AccessServicer
from coalition_server.api.auth import Policy
from coalition_server.api.consent import ConsentServicer
from coalition_server.api.disputes import DisputeServicer
from coalition_server.api.items import ItemServicer
from coalition_server.api.ledger import LedgerServicer
from coalition_server.api.negotiation import NegotiationServicer
from coalition_server.api.party import PartyServicer
from coalition_server.api.strikes import StrikeServicer
from coalition_server.config import Settings

from .rpcs import (
    BUILDERS,
    CALLERS,
    CODE,
    Outcome,
    RowCounter,
    all_rpcs,
    build,
    build_world,
    call_metadata,
    changed,
    documented_reasons,
    invoke,
    ratifying_server,
)

OK = "OK"
ROLE = "PERMISSION_DENIED/ROLE_NOT_ALLOWED"
UNKNOWN = "UNAUTHENTICATED/UNKNOWN_KEY"
UNSIGNED = "UNAUTHENTICATED/MISSING_CREDENTIALS"
PUBLIC = (OK, OK, OK, OK, OK, OK)

Row = tuple[str, str, str, str, str, str]

CONTRIBUTORS = (OK, ROLE, ROLE, ROLE, UNKNOWN, UNSIGNED)
"""For contributors only; the auditor and labs are refused on their role."""
LABS = (ROLE, OK, OK, ROLE, UNKNOWN, UNSIGNED)
"""For labs only, each on its own objects (or none: an empty list, a feed with nothing)."""


def the_lab_s(reason: str) -> Row:
    """For the lab party to the object only: the other lab is refused with ``reason``."""
    return (ROLE, OK, f"PERMISSION_DENIED/{reason}", ROLE, UNKNOWN, UNSIGNED)


# Columns: contributor, lab, other_lab, auditor, unknown_key, no_key (rpcs.CALLERS).
TABLE: dict[str, Row] = {
    "AccessService.ListAgreements": LABS,
    "AccessService.TakeLease": the_lab_s("NOT_YOUR_AGREEMENT"),
    "AccessService.Fetch": the_lab_s("NOT_YOUR_LEASE"),
    "AccessService.WatchWithdrawals": LABS,
    "AccessService.AcknowledgeWithdrawal": the_lab_s("NOT_YOUR_NOTICE"),
    "AccessService.ExportAgreement": PUBLIC,
    "ConsentService.GrantConsent": CONTRIBUTORS,
    "ConsentService.ListConsents": CONTRIBUTORS,
    "ConsentService.GetConsentState": PUBLIC,
    "ConsentService.Withdraw": CONTRIBUTORS,
    "ConsentService.ExportConsent": CONTRIBUTORS,
    "DisputeService.FileDispute": CONTRIBUTORS,
    "DisputeService.RespondToDispute": the_lab_s("NOT_YOUR_AGREEMENT"),
    "DisputeService.ListDisputes": PUBLIC,
    "DisputeService.GetDispute": PUBLIC,
    "ItemService.RegisterItems": CONTRIBUTORS,
    "ItemService.UploadContent": CONTRIBUTORS,
    "ItemService.ListItems": CONTRIBUTORS,
    "ItemService.GetItem": CONTRIBUTORS,
    "LedgerService.GetLogInfo": PUBLIC,
    "LedgerService.GetCheckpoint": PUBLIC,
    "LedgerService.ListEntries": PUBLIC,
    "LedgerService.GetEntry": PUBLIC,
    "LedgerService.GetInclusionProof": PUBLIC,
    "LedgerService.GetConsistencyProof": PUBLIC,
    "LedgerService.ListEntriesBySubject": PUBLIC,
    "NegotiationService.GetCatalogue": PUBLIC,
    "NegotiationService.EstimateSupply": LABS,
    "NegotiationService.OpenNegotiation": LABS,
    "NegotiationService.Move": the_lab_s("NOT_YOUR_NEGOTIATION"),
    "NegotiationService.SignAgreement": the_lab_s("NOT_YOUR_NEGOTIATION"),
    "NegotiationService.GetNegotiation": the_lab_s("NOT_YOUR_NEGOTIATION"),
    "NegotiationService.ListNegotiations": LABS,
    "NegotiationService.WatchNegotiation": the_lab_s("NOT_YOUR_NEGOTIATION"),
    "NegotiationService.CastBallot": CONTRIBUTORS,
    "NegotiationService.ListRatifications": CONTRIBUTORS,
    "NegotiationService.GetEarnings": CONTRIBUTORS,
    "NegotiationService.GetPayoutStatement": PUBLIC,
    # Any key may register itself (a registered one is told so); a call must be signed.
    "PartyService.RegisterParty": (
        "ALREADY_EXISTS/PARTY_ALREADY_REGISTERED",
        "ALREADY_EXISTS/PARTY_ALREADY_REGISTERED",
        "ALREADY_EXISTS/PARTY_ALREADY_REGISTERED",
        "ALREADY_EXISTS/PARTY_ALREADY_REGISTERED",
        OK,
        UNSIGNED,
    ),
    "PartyService.GetParty": PUBLIC,
    "PartyService.WhoAmI": (OK, OK, OK, OK, UNKNOWN, UNSIGNED),
    "StrikeService.Pledge": CONTRIBUTORS,
    "StrikeService.RetractPledge": CONTRIBUTORS,
    "StrikeService.ListStrikes": PUBLIC,
    "StrikeService.ListPledges": CONTRIBUTORS,
}

REFUSED = (CODE.UNAUTHENTICATED, CODE.PERMISSION_DENIED)


def _mark(outcome: str) -> str:
    """A cell of the printed table: allowed (✓) or refused (✗), with the reason."""
    code, _, reason = outcome.partition("/")
    refused = code in (c.name for c in REFUSED)
    return f"{'✗' if refused else '✓'} {reason or code}"


def _render(results: dict[str, list[str]]) -> str:
    width = max(len(label) for label in results)
    cells = [[_mark(o) for o in row] for row in results.values()]
    widths = [max(len(c), max(len(row[i]) for row in cells)) for i, c in enumerate(CALLERS)]
    lines = ["  ".join([" " * width, *(c.ljust(w) for c, w in zip(CALLERS, widths, strict=True))])]
    for label, row in zip(results, cells, strict=True):
        lines.append(
            "  ".join([label.ljust(width), *(c.ljust(w) for c, w in zip(row, widths, strict=True))])
        )
    return "\n".join(lines)


def test_the_table_has_a_row_for_exactly_every_rpc() -> None:
    rpcs = {rpc.label for rpc in all_rpcs()}
    assert len(rpcs) >= 45  # the descriptors are still found
    assert sorted(rpcs - TABLE.keys()) == [], "add a row to TABLE for each new RPC"
    assert sorted(TABLE.keys() - rpcs) == [], "remove the rows of RPCs that are gone"
    assert sorted(rpcs ^ BUILDERS.keys()) == [], "rpcs.BUILDERS needs a request for each RPC"


def test_the_table_agrees_with_each_rpc_s_declared_policy() -> None:
    """The columns the policy alone decides (who may call at all) follow the ``@rpc``
    mark of the servicer method: a public read is open to anyone, a signed call needs
    credentials, a party's call a registered key. The rest of each row is roles and
    ownership, which only the run below can show."""
    servicers = {
        cls.__name__.removesuffix("Servicer") + "Service": cls
        for cls in (
            AccessServicer,
            ConsentServicer,
            DisputeServicer,
            ItemServicer,
            LedgerServicer,
            NegotiationServicer,
            PartyServicer,
            StrikeServicer,
        )
    }
    expected = {
        Policy.PUBLIC: (OK, OK),
        Policy.SIGNED: (OK, UNSIGNED),  # any key may register itself
        Policy.PARTY: (UNKNOWN, UNSIGNED),
    }
    wrong = []
    for rpc in all_rpcs():
        policy = getattr(servicers[rpc.service], rpc.name).__coalition_policy__
        row = TABLE[rpc.label]
        if row[-2:] != expected[policy]:
            wrong.append(f"{rpc.label} is {policy.name} but its row ends {row[-2:]}")
        if policy is Policy.PUBLIC and row != PUBLIC:
            wrong.append(f"{rpc.label} is PUBLIC but refuses someone: {row}")
    assert wrong == []


def test_every_refusal_in_the_table_is_documented() -> None:
    documented = documented_reasons()
    undocumented = sorted(
        {
            cell
            for row in TABLE.values()
            for cell in row
            if cell != OK and cell.partition("/")[2] not in documented[cell.partition("/")[0]]
        }
    )
    assert undocumented == []


async def test_every_rpc_by_every_caller(
    settings: Settings, tmp_path: Path, db_url: str, figure: Callable[[str], None]
) -> None:
    rpcs = all_rpcs()
    results: dict[str, list[str]] = {}
    wrote: list[str] = []
    leaks: list[str] = []
    async with ratifying_server(settings, tmp_path) as server:
        world = await build_world(server)
        counter = RowCounter(db_url)
        try:
            async with grpc.aio.insecure_channel(world.target) as channel:
                for rpc in rpcs:
                    row = results[rpc.label] = []
                    for caller in CALLERS:
                        who = world.who(caller)
                        request = build(world, rpc, who)
                        before = await counter.counts()
                        outcome: Outcome = await invoke(
                            channel, rpc, request, call_metadata(who.call_key, rpc, request)
                        )
                        row.append(str(outcome))
                        if caller == "other_lab" and outcome.ok:
                            leaked = _reveals_the_lab_s(rpc.label, outcome, who.key.key_id)
                            if leaked:
                                leaks.append(f"{rpc.label} by the other lab: {leaked}")
                        if not outcome.ok:
                            difference = changed(before, await counter.counts())
                            if difference:
                                wrote.append(f"{rpc.label} by {caller}: {outcome} {difference}")
        finally:
            await counter.close()
            await world.close()
    cells = [cell for row in results.values() for cell in row]
    refused = sum(cell.partition("/")[0] in (c.name for c in REFUSED) for cell in cells)
    figure(
        f"authorisation[{db_url.partition('+')[0]}]: {len(rpcs)} RPCs x {len(CALLERS)} callers"
        f" = {len(cells)} cells: {len(cells) - refused} allowed"
        f" ({cells.count(OK)} OK, {len(cells) - refused - cells.count(OK)} refused for a"
        f" business reason), {refused} refused; {len(wrote)} refusals wrote rows"
    )
    print(_render(results))
    mismatches = [
        f"{label} by {caller}: expected {expected}, got {got}"
        for label, row in results.items()
        for caller, expected, got in zip(
            CALLERS, TABLE.get(label, ("?",) * len(CALLERS)), row, strict=True
        )
        if expected != got
    ]
    assert mismatches == [], "\n".join(mismatches)
    assert wrote == [], "refused calls wrote rows:\n" + "\n".join(wrote)
    assert leaks == [], "the other lab saw the lab's objects:\n" + "\n".join(leaks)


def _reveals_the_lab_s(label: str, outcome: Outcome, own: str) -> str:
    """What an allowed call by the other lab (key id ``own``) showed of another lab's
    objects ("" if nothing): its lists and feed may hold its own objects only."""
    if label == "AccessService.ListAgreements":
        records = access_pb2.ListAgreementsResponse.FromString(outcome.response).agreements
        labs = [access_pb2.Agreement.FromString(r.agreement.payload).lab_key_id for r in records]
        others = [lab for lab in labs if lab != own]
        return f"{len(others)} agreements of another lab" if others else ""
    if label == "NegotiationService.ListNegotiations":
        found = negotiation_pb2.ListNegotiationsResponse.FromString(outcome.response)
        others = [n.lab_key_id for n in found.negotiations if n.lab_key_id != own]
        return f"{len(others)} negotiations of another lab" if others else ""
    if label == "AccessService.WatchWithdrawals":
        # The other lab holds no agreement, so any notice on its feed is someone else's.
        return f"{outcome.messages} notices" if outcome.messages else ""
    return ""


def test_the_other_lab_s_lists_are_checked_for_leaks() -> None:
    """The leak check reads what it should: a list with one agreement is a leak."""
    theirs = negotiation_pb2.Negotiation(lab_key_id="a" * 64)
    mine = negotiation_pb2.Negotiation(lab_key_id="b" * 64)
    listed = negotiation_pb2.ListNegotiationsResponse(negotiations=[mine, theirs])
    outcome = Outcome(grpc.StatusCode.OK, messages=1, response=listed.SerializeToString())
    label = "NegotiationService.ListNegotiations"
    assert _reveals_the_lab_s(label, outcome, "b" * 64) == "1 negotiations of another lab"
    assert _reveals_the_lab_s(label, outcome, "a" * 64) == "1 negotiations of another lab"
    only_mine = Outcome(
        grpc.StatusCode.OK,
        messages=1,
        response=negotiation_pb2.ListNegotiationsResponse(negotiations=[mine]).SerializeToString(),
    )
    assert _reveals_the_lab_s(label, only_mine, "b" * 64) == ""
