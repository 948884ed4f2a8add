"""The replay's signer rules (coalition.audit.LedgerReplay), on ledgers built in memory.

Each rule: the honest ledger passes, and a ledger breaking the rule in one entry is rejected
at that entry with a message naming the rule. Every test runs twice: signatures checked
inline, and deferred (as ``coalition audit verify --jobs N`` does, for worker processes).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import pytest

from coalition import dsse, statements
from coalition.audit import (
    AuditError,
    ExpectedKey,
    LedgerReplay,
    ReplayResult,
    find_signature_failure,
)
from coalition.keys import SigningKey
from coalition.v1 import party_pb2
from tests.audit import ledger as L
from tests.audit.ledger import Ledger, Parties, honest_ledger, registration, signed

NOT_REGISTERED = "not a party registered before this entry"


@pytest.fixture
def p() -> Parties:
    return Parties.generate()


@pytest.fixture
def honest(p: Parties) -> Ledger:
    return honest_ledger(p)


@pytest.fixture(params=[False, True], ids=["inline", "deferred"])
def defer(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


Run = Callable[..., ReplayResult]


@pytest.fixture
def run(defer: bool) -> Run:
    """Replay a Ledger (or raw leaves) in the mode under test."""

    def go(ledger: Ledger | list[bytes], **kw: tuple[ExpectedKey, ...]) -> ReplayResult:
        leaves = ledger.leaves() if isinstance(ledger, Ledger) else ledger
        return L.replay(leaves, defer=defer, **kw)

    return go


@pytest.fixture
def rejected(run: Run) -> Callable[..., AuditError]:
    """Replay a ledger that must fail; the error (whose index must be set)."""

    def go(ledger: Ledger | list[bytes], **kw: tuple[ExpectedKey, ...]) -> AuditError:
        with pytest.raises(AuditError) as info:
            run(ledger, **kw)
        assert info.value.index is not None
        assert info.value.message.startswith(f"entry {info.value.index}: ")
        return info.value

    return go


def party(ledger: Ledger, name: str, p: Parties) -> str:
    """How messages describe a party of the honest ledger."""
    words = {
        "coalition": "the coalition's key",
        "member": "a contributor",
        "other_member": "a contributor",
        "lab": "a lab",
        "other_lab": "a lab",
        "auditor": "an auditor",
    }
    return f"{words[name]} registered at entry {ledger.index(name)}"


# --- the honest ledger ----------------------------------------------------------------------


def test_the_honest_ledger_passes(run: Run, p: Parties, honest: Ledger) -> None:
    result = run(honest)
    assert result.size == len(honest.envelopes)
    assert result.coalition_key == p.coalition.public_key
    assert result.parties == 6
    assert result.kinds == Counter(statements.kind(e.payload_type) for e in honest.envelopes)
    # Every statement type the protocol knows appears, so every rule was exercised.
    assert set(result.kinds) == {statements.kind(t) for t in statements.STATEMENT_TYPES}


def test_honest_signatures_verify_in_worker_processes(p: Parties, honest: Ledger) -> None:
    replay = LedgerReplay(defer_signatures=True)
    for i, item in enumerate(honest.leaves()):
        replay.feed(i, item)
    checks = replay.take_deferred()
    # One check per signature: the Agreement carries two.
    assert len(checks) == len(honest.envelopes) + 1
    i = honest.index("Agreement")
    bad = [c._replace(signature=bytes(64)) if c.entry == i else c for c in checks]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        good, failed = pool.map(find_signature_failure, [checks, bad])
    assert good is None
    assert failed == (i, f"entry {i}: signature by {p.lab.key_id} does not verify")


# --- entry 0: the coalition's own registration ---------------------------------------------


def test_entry_0_must_exist(run: Run) -> None:
    with pytest.raises(AuditError) as info:
        run([])
    assert info.value.index == 0
    assert info.value.message == (
        "the log is empty: its entry 0 must be the coalition's own PartyRegistration "
        "(ROLE_COALITION), so there is no coalition key to audit against"
    )


def test_entry_0_must_be_a_party_registration(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    bad = honest.replace("coalition", signed(L.shredding_record(), p.coalition))
    assert rejected(bad).message == (
        "entry 0: the log must begin with the coalition's own PartyRegistration "
        "(ROLE_COALITION), but entry 0 is a ShreddingRecord"
    )


@pytest.mark.parametrize(
    ("role", "name"),
    [
        (party_pb2.ROLE_CONTRIBUTOR, "ROLE_CONTRIBUTOR"),
        (party_pb2.ROLE_LAB, "ROLE_LAB"),
        (party_pb2.ROLE_UNSPECIFIED, "ROLE_UNSPECIFIED"),
    ],
)
def test_entry_0_must_register_the_coalition_role(
    rejected: Callable[..., AuditError],
    p: Parties,
    honest: Ledger,
    role: party_pb2.Role.ValueType,
    name: str,
) -> None:
    bad = honest.replace("coalition", signed(registration(p.coalition, role), p.coalition))
    assert rejected(bad).message == (
        "entry 0: the log must begin with the coalition's own PartyRegistration "
        f"(ROLE_COALITION), but entry 0 registers {p.coalition.key_id} with role {name}"
    )


def test_entry_0_must_be_self_signed(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    statement = registration(p.coalition, party_pb2.ROLE_COALITION)
    by_other = honest.replace("coalition", signed(statement, p.outsider))
    assert rejected(by_other).message == (
        f"entry 0: the registration of {p.coalition.key_id} is not signed by that key"
    )
    co_signed = honest.replace("coalition", signed(statement, p.coalition, p.outsider))
    assert rejected(co_signed).message == (
        "entry 0: a PartyRegistration must be signed only by the key it registers "
        f"({p.coalition.key_id}), but it is also signed by {p.outsider.key_id} ({NOT_REGISTERED})"
    )
    # A signature that names the coalition's key but is another key's: checked, and fails.
    forged = signed(statement, p.outsider)
    forged = dsse.Envelope(
        forged.payload_type,
        forged.payload,
        (dsse.Signature(p.coalition.key_id, forged.signatures[0].sig),),
    )
    error = rejected(honest.replace("coalition", forged))
    assert (error.index, error.message) == (
        0,
        f"entry 0: signature by {p.coalition.key_id} does not verify",
    )


def test_the_coalition_key_comes_from_entry_0_and_must_match_other_sources(
    run: Run, rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    ledger_key = p.coalition.public_key
    state = ExpectedKey("the state file /tmp/state.json", ledger_key.raw)
    server = ExpectedKey("the server's GetLogInfo", ledger_key.raw)
    # Sources that agree, or name nothing, pass; the result's key is the ledger's.
    result = run(honest, expected=(state, server, ExpectedKey("an old state", b"")))
    assert result.coalition_key == ledger_key

    other = p.outsider.public_key
    for source in (state, server):
        wrong = source._replace(public_key=other.raw)
        message = rejected(honest, expected=(wrong,)).message
        assert message == (
            f"entry 0: the ledger registers coalition key {ledger_key.key_id} "
            f"({L.b64(ledger_key.raw)}), but {source.source} names coalition key "
            f"{other.key_id} ({L.b64(other.raw)})"
        )
    # The state file is checked first when both disagree.
    both = (state._replace(public_key=other.raw), server._replace(public_key=b"\x01" * 32))
    assert "but the state file /tmp/state.json names" in rejected(honest, expected=both).message
    short = b"\x01" * 5
    garbled = rejected(honest, expected=(server._replace(public_key=short),)).message
    assert garbled.endswith(f"names coalition key {L.b64(short)} (not a 32-byte key)")


def test_no_later_entry_may_register_the_coalition(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    usurper = signed(registration(p.auditor, party_pb2.ROLE_COALITION), p.auditor)
    error = rejected(honest.replace("auditor", usurper))
    assert error.index == honest.index("auditor")
    assert error.message == (
        f"entry {error.index}: only entry 0 may register the coalition (ROLE_COALITION), "
        f"but this entry registers {p.auditor.key_id} with that role"
    )


# --- PartyRegistration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "name"),
    [(party_pb2.ROLE_UNSPECIFIED, "ROLE_UNSPECIFIED"), (77, "77 (unknown)")],
)
def test_a_party_registers_as_contributor_lab_or_auditor(
    rejected: Callable[..., AuditError],
    p: Parties,
    honest: Ledger,
    role: party_pb2.Role.ValueType,
    name: str,
) -> None:
    bad = honest.replace("auditor", signed(registration(p.auditor, role), p.auditor))
    i = honest.index("auditor")
    assert rejected(bad).message == (
        f"entry {i}: a PartyRegistration's role must be ROLE_CONTRIBUTOR, ROLE_LAB or "
        f"ROLE_AUDITOR, but {p.auditor.key_id} registers with role {name}"
    )


def test_a_party_registration_is_signed_by_its_key_only(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    statement = registration(p.auditor, party_pb2.ROLE_AUDITOR)
    i = honest.index("auditor")
    stolen = honest.replace("auditor", signed(statement, p.member))
    assert rejected(stolen).message == (
        f"entry {i}: the registration of {p.auditor.key_id} is not signed by that key"
    )
    # A co-signature, even by a registered party (here the coalition), is refused.
    for co_signer, what in ((p.coalition, party(honest, "coalition", p)), (p.outsider, None)):
        co_signed = honest.replace("auditor", signed(statement, p.auditor, co_signer))
        assert rejected(co_signed).message == (
            f"entry {i}: a PartyRegistration must be signed only by the key it registers "
            f"({p.auditor.key_id}), but it is also signed by {co_signer.key_id} "
            f"({what or NOT_REGISTERED})"
        )


@pytest.mark.parametrize("first", ["coalition", "member", "lab"])
def test_a_key_registers_once(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger, first: str
) -> None:
    key: SigningKey = getattr(p, first)
    again = signed(registration(key, party_pb2.ROLE_AUDITOR), key)
    i = honest.index("auditor")
    assert rejected(honest.replace("auditor", again)).message == (
        f"entry {i}: key {key.key_id} is registered again "
        f"(first registered at entry {honest.index(first)})"
    )


# --- statements with one author -------------------------------------------------------------


def article(kind: str) -> str:
    return "an" if kind[0] in "AEIOU" else "a"


@pytest.mark.parametrize("kind", L.CONTRIBUTOR_SIGNED)
@pytest.mark.parametrize("signer", ["lab", "auditor", "coalition", "outsider"])
def test_member_statements_are_signed_by_a_registered_contributor(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger, kind: str, signer: str
) -> None:
    key: SigningKey = getattr(p, signer)
    bad = honest.replace(kind, signed(L.statement(kind, p), key))
    what = NOT_REGISTERED if signer == "outsider" else party(honest, signer, p)
    assert rejected(bad).message == (
        f"entry {honest.index(kind)}: {article(kind)} {kind} must be signed by a registered "
        f"contributor, but its signer {key.key_id} is {what}"
    )


@pytest.mark.parametrize("kind", L.CONTRIBUTOR_SIGNED)
def test_member_statements_carry_exactly_the_authors_signature(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger, kind: str
) -> None:
    statement = L.statement(kind, p)
    i = honest.index(kind)
    for extra, what in (
        (p.other_member, party(honest, "other_member", p)),
        (p.coalition, party(honest, "coalition", p)),
        (p.outsider, NOT_REGISTERED),
    ):
        bad = honest.replace(kind, signed(statement, p.member, extra))
        assert rejected(bad).message == (
            f"entry {i}: {article(kind)} {kind} must carry exactly one signature, by a "
            f"registered contributor, but it has 2: {p.member.key_id} "
            f"({party(honest, 'member', p)}), {extra.key_id} ({what})"
        )


@pytest.mark.parametrize("kind", L.LAB_SIGNED)
@pytest.mark.parametrize("signer", ["member", "auditor", "coalition", "outsider"])
def test_lab_statements_are_signed_by_a_registered_lab(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger, kind: str, signer: str
) -> None:
    key: SigningKey = getattr(p, signer)
    bad = honest.replace(kind, signed(L.statement(kind, p), key))
    what = NOT_REGISTERED if signer == "outsider" else party(honest, signer, p)
    assert rejected(bad).message == (
        f"entry {honest.index(kind)}: {article(kind)} {kind} must be signed by a registered "
        f"lab, but its signer {key.key_id} is {what}"
    )
    two = honest.replace(kind, signed(L.statement(kind, p), p.lab, p.other_lab))
    assert rejected(two).message.startswith(
        f"entry {honest.index(kind)}: {article(kind)} {kind} must carry exactly one "
        "signature, by a registered lab, but it has 2: "
    )


@pytest.mark.parametrize("kind", L.COALITION_SIGNED)
def test_coalition_statements_are_signed_by_the_coalition_key_only(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger, kind: str
) -> None:
    statement = L.statement(kind, p)
    i = honest.index(kind)
    for name in ("lab", "member", "auditor", "outsider"):
        key: SigningKey = getattr(p, name)
        what = NOT_REGISTERED if name == "outsider" else party(honest, name, p)
        assert rejected(honest.replace(kind, signed(statement, key))).message == (
            f"entry {i}: {article(kind)} {kind} must be signed by the coalition key, but its "
            f"signer {key.key_id} is {what}"
        )
    co_signed = honest.replace(kind, signed(statement, p.coalition, p.lab))
    assert rejected(co_signed).message == (
        f"entry {i}: {article(kind)} {kind} must carry exactly one signature, by the "
        f"coalition key, but it has 2: {p.coalition.key_id} "
        f"({party(honest, 'coalition', p)}), {p.lab.key_id} ({party(honest, 'lab', p)})"
    )


def test_negotiation_moves_are_signed_by_a_lab_or_the_coalition(
    run: Run, rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    move = L.statement("NegotiationMove", p)
    i = honest.index("NegotiationMove")
    # The lab that opened the negotiation may make the move the coalition made.
    assert run(honest.replace("NegotiationMove", signed(move, p.lab))).size > i
    for name in ("member", "auditor", "outsider"):
        key: SigningKey = getattr(p, name)
        what = NOT_REGISTERED if name == "outsider" else party(honest, name, p)
        assert rejected(honest.replace("NegotiationMove", signed(move, key))).message == (
            f"entry {i}: a NegotiationMove must be signed by a registered lab or the "
            f"coalition key, but its signer {key.key_id} is {what}"
        )
    both = honest.replace("NegotiationMove", signed(move, p.lab, p.coalition))
    assert rejected(both).message.startswith(
        f"entry {i}: a NegotiationMove must carry exactly one signature, by a registered lab "
        "or the coalition key, but it has 2: "
    )


# --- negotiations: moves by the coalition or the lab that opened them; ballots after a call --


def with_entries(ledger: Ledger, after: str, *entries: tuple[str, dsse.Envelope]) -> Ledger:
    """A copy of ``ledger`` with named ``entries`` inserted right after entry ``after``."""
    out = Ledger()
    for name, envelope in zip(_names_in_order(ledger), ledger.envelopes, strict=True):
        out.add(name, envelope)
        if name == after:
            for new_name, new_envelope in entries:
                out.add(new_name, new_envelope)
    return out


def without(ledger: Ledger, *names: str) -> Ledger:
    """A copy of ``ledger`` without the named entries."""
    out = Ledger()
    for name, envelope in zip(_names_in_order(ledger), ledger.envelopes, strict=True):
        if name not in names:
            out.add(name, envelope)
    return out


def _names_in_order(ledger: Ledger) -> list[str]:
    by_index = {i: name for name, i in ledger.names.items()}
    return [by_index[i] for i in range(len(ledger.envelopes))]


def test_a_move_by_another_lab_is_refused(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    i = honest.index("NegotiationMove by the lab")
    stolen = honest.replace(
        "NegotiationMove by the lab", signed(L.negotiation_move(round_=2), p.other_lab)
    )
    assert rejected(stolen).message == (
        f"entry {i}: a NegotiationMove in negotiation {L.NEGOTIATION_ID} must be signed by "
        f"the coalition key or the lab that opened it ({p.lab.key_id}, at entry "
        f"{honest.index('NegotiationRequest')}), but its signer {p.other_lab.key_id} is "
        f"{party(honest, 'other_lab', p)}"
    )


def test_each_lab_moves_in_its_own_negotiation_only(
    run: Run, rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    theirs = L.negotiation_request(nonce=b"negotiation-0002")
    theirs_id = L.negotiation_id(theirs)
    both = with_entries(
        honest,
        "NegotiationMove by the lab",
        ("their request", signed(theirs, p.other_lab)),
        ("their move", signed(L.negotiation_move(theirs_id, 2), p.other_lab)),
        ("coalition's move", signed(L.negotiation_move(theirs_id, 3), p.coalition)),
        ("our move", signed(L.negotiation_move(round_=3), p.lab)),
    )
    assert run(both).kinds["NegotiationMove"] == 5
    # The first lab cannot move in the other lab's negotiation, nor the other way round.
    crossed = both.replace("their move", signed(L.negotiation_move(theirs_id, 2), p.lab))
    i = both.index("their move")
    assert rejected(crossed).message == (
        f"entry {i}: a NegotiationMove in negotiation {theirs_id} must be signed by the "
        f"coalition key or the lab that opened it ({p.other_lab.key_id}, at entry "
        f"{both.index('their request')}), but its signer {p.lab.key_id} is "
        f"{party(honest, 'lab', p)}"
    )
    crossed = both.replace("our move", signed(L.negotiation_move(round_=3), p.other_lab))
    assert rejected(crossed).index == both.index("our move")


def test_a_move_must_be_about_a_negotiation_opened_earlier(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    i = honest.index("NegotiationMove")
    for nid, shown in (("e" * 32, "e" * 32), ("", '""')):
        unknown = honest.replace("NegotiationMove", signed(L.negotiation_move(nid), p.coalition))
        assert rejected(unknown).message == (
            f"entry {i}: a NegotiationMove must be about a negotiation opened by an earlier "
            f"NegotiationRequest, but negotiation {shown} was not opened before this entry"
        )
    # The request logged after the move does not open the negotiation for it.
    request = honest.envelopes[honest.index("NegotiationRequest")]
    late = with_entries(
        without(honest, "NegotiationRequest"), "RatificationResult", ("late request", request)
    )
    assert rejected(late).index == i - 1


def test_a_refused_request_opens_no_negotiation(p: Parties, honest: Ledger) -> None:
    # A request that fails its signer rule changes nothing: the next move is refused too.
    leaves = honest.leaves()
    i = honest.index("NegotiationRequest")
    replay = LedgerReplay()
    for index, item in enumerate(leaves[:i]):
        replay.feed(index, item)
    by_member = L.leaf(signed(L.negotiation_request(), p.member), L.T0 + i)
    with pytest.raises(AuditError, match="must be signed by a registered lab"):
        replay.feed(i, by_member)
    move = L.leaf(honest.envelopes[i + 1], L.T0 + i)
    with pytest.raises(AuditError) as info:
        replay.feed(i, move)
    assert info.value.message.endswith(
        f"negotiation {L.NEGOTIATION_ID} was not opened before this entry"
    )
    # The lab's own request opens it.
    replay.feed(i, leaves[i])
    replay.feed(i + 1, leaves[i + 1])


def test_a_ballot_needs_an_earlier_ratification_call(
    run: Run, rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    # No call for that negotiation: without one, or with one for another negotiation.
    i = honest.index("Ballot")
    message = (
        f"entry {{i}}: a Ballot must be cast on a negotiation put to ratification by an "
        f"earlier RatificationCall, but negotiation {L.NEGOTIATION_ID} has no "
        "RatificationCall before this entry"
    )
    no_call = without(honest, "RatificationCall")
    assert rejected(no_call).message == message.format(i=i - 1)
    elsewhere = honest.replace(
        "RatificationCall", signed(L.ratification_call("f" * 32), p.coalition)
    )
    assert rejected(elsewhere).message == message.format(i=i)
    # The call logged after the ballot is too late.
    call = honest.envelopes[honest.index("RatificationCall")]
    late = with_entries(without(honest, "RatificationCall"), "Ballot", ("late call", call))
    assert rejected(late).index == i - 1
    # A ballot about no negotiation at all.
    nowhere = honest.replace("Ballot", signed(L.ballot(""), p.member))
    assert rejected(nowhere).message.startswith(
        f"entry {i}: a Ballot must be cast on a negotiation put to ratification"
    )
    # Several members vote after one call.
    votes = with_entries(honest, "Ballot", ("second vote", signed(L.ballot(), p.other_member)))
    assert run(votes).kinds["Ballot"] == 2


# --- Agreement: the lab it names and the coalition -----------------------------------------


def test_an_agreement_names_a_registered_lab(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    i = honest.index("Agreement")
    for name in ("member", "auditor", "coalition", "outsider"):
        key: SigningKey = getattr(p, name)
        signers = (key, p.coalition) if key is not p.coalition else (key,)
        bad = honest.replace("Agreement", signed(L.agreement(key.key_id), *signers))
        what = NOT_REGISTERED if name == "outsider" else party(honest, name, p)
        assert rejected(bad).message == (
            f"entry {i}: an Agreement must be signed by the registered lab its lab_key_id "
            f"names, but lab_key_id names {key.key_id}, which is {what}"
        )
    nobody = honest.replace("Agreement", signed(L.agreement(""), p.lab, p.coalition))
    assert rejected(nobody).message == (
        f"entry {i}: an Agreement must be signed by the registered lab its lab_key_id "
        "names, but lab_key_id names no key"
    )


def test_an_agreement_is_signed_by_its_lab_and_the_coalition(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    i = honest.index("Agreement")
    statement = L.agreement(p.lab.key_id)
    assert rejected(honest.replace("Agreement", signed(statement, p.lab))).message == (
        f"entry {i}: an Agreement must be signed by its lab and the coalition key, but the "
        f"coalition's signature ({p.coalition.key_id}) is missing"
    )
    assert rejected(honest.replace("Agreement", signed(statement, p.coalition))).message == (
        f"entry {i}: an Agreement must be signed by its lab and the coalition key, but the "
        f"signature of its lab {p.lab.key_id} is missing"
    )
    # Another lab (registered, but not the one named) cannot sign for it, nor alongside it.
    for signers in ((p.other_lab, p.coalition), (p.lab, p.coalition, p.other_lab)):
        bad = honest.replace("Agreement", signed(statement, *signers))
        assert rejected(bad).message == (
            f"entry {i}: an Agreement must be signed only by its lab and the coalition key, "
            f"but it is also signed by {p.other_lab.key_id} ({party(honest, 'other_lab', p)})"
        )
    extra = honest.replace("Agreement", signed(statement, p.lab, p.coalition, p.outsider))
    assert rejected(extra).message.endswith(
        f"but it is also signed by {p.outsider.key_id} ({NOT_REGISTERED})"
    )


def test_an_agreement_signed_in_either_order_passes(run: Run, p: Parties, honest: Ledger) -> None:
    swapped = signed(L.honest_agreement(p), p.coalition, p.lab)
    assert run(honest.replace("Agreement", swapped)).kinds["Agreement"] == 1


def test_both_agreement_signatures_must_verify(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    good = honest.envelopes[honest.index("Agreement")]
    for bad_one in (0, 1):
        sigs = list(good.signatures)
        sigs[bad_one] = dsse.Signature(sigs[bad_one].keyid, bytes(64))
        error = rejected(
            honest.replace("Agreement", dsse.Envelope(good.payload_type, good.payload, tuple(sigs)))
        )
        assert (error.index, error.message) == (
            honest.index("Agreement"),
            f"entry {honest.index('Agreement')}: signature by {sigs[bad_one].keyid} does not "
            "verify",
        )


# --- what the rules depend on: order, and the set of types ---------------------------------


def test_a_signer_must_be_registered_before_its_statement(
    rejected: Callable[..., AuditError], p: Parties, honest: Ledger
) -> None:
    # The other member's item, logged before the other member registers.
    early = Ledger()
    for name, index in honest.names.items():
        early.add(name, honest.envelopes[index])
    early.envelopes.insert(1, signed(L.item_registration(), p.other_member))
    error = rejected(early)
    assert error.message == (
        f"entry 1: an ItemRegistration must be signed by a registered contributor, but its "
        f"signer {p.other_member.key_id} is {NOT_REGISTERED}"
    )


def test_unknown_statement_types_fail(
    rejected: Callable[..., AuditError],
    p: Parties,
    honest: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    i = honest.index("ShreddingRecord")
    mystery = dsse.sign("application/vnd.coalition.v1.Mystery+proto", b"", p.coalition)
    assert rejected(honest.replace("ShreddingRecord", mystery)).message == (
        f"entry {i}: unknown statement type 'application/vnd.coalition.v1.Mystery+proto'"
    )
    # A type this version decodes but has no signer rule for fails too.
    party_type = "application/vnd.coalition.v1.Party+proto"
    monkeypatch.setitem(statements.STATEMENT_TYPES, party_type, party_pb2.Party)
    unruled = dsse.sign(party_type, party_pb2.Party(name="x").SerializeToString(), p.coalition)
    assert rejected(honest.replace("ShreddingRecord", unruled)).message == (
        f"entry {i}: no signer rule for statement type {party_type!r}: this auditor cannot "
        "tell who may sign it"
    )


def test_a_bad_signature_before_a_rule_violation_is_reported_first(
    p: Parties, honest: Ledger
) -> None:
    # Deferred: entry 1's bad signature is only found once the checks run, but it is the
    # earlier failure; the CLI settles deferred checks before reporting a rule failure.
    member = honest.envelopes[1]
    broken = dsse.Envelope(
        member.payload_type,
        member.payload,
        (dsse.Signature(member.signatures[0].keyid, bytes(64)),),
    )
    ledger = honest.replace("member", broken).replace(
        "KeyRelease", signed(L.key_release(p.lab.key_id), p.lab)
    )
    replay = LedgerReplay(defer_signatures=True)
    leaves = ledger.leaves()
    failing = honest.index("KeyRelease")
    for i, item in enumerate(leaves[:failing]):
        replay.feed(i, item)
    with pytest.raises(AuditError) as info:
        replay.feed(failing, leaves[failing])
    assert info.value.index == failing
    assert find_signature_failure(replay.take_deferred()) == (
        1,
        f"entry 1: signature by {p.member.key_id} does not verify",
    )


def test_kinds_named_in_the_rules_are_all_statement_types() -> None:
    # Guard: a statement type added to STATEMENT_TYPES needs a signer rule here too.
    kinds = {statements.kind(t) for t in statements.STATEMENT_TYPES}
    ruled = {
        "PartyRegistration",
        "Agreement",
        *L.CONTRIBUTOR_SIGNED,
        *L.LAB_SIGNED,
        *L.COALITION_SIGNED,
        *L.LAB_OR_COALITION_SIGNED,
    }
    assert kinds == ruled
