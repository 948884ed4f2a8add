"""The pure ledger replay (coalition.audit): every check, on hand-made leaves."""

from __future__ import annotations

import base64
import pickle

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from coalition import dsse, merkle, statements
from coalition.audit import (
    AuditError,
    LedgerReplay,
    SignatureCheck,
    TreeHead,
    find_signature_failure,
    verify_signature_checks,
)
from coalition.checkpoint import Checkpoint
from coalition.keys import SigningKey
from coalition.v1 import access_pb2, items_pb2, ledger_pb2, party_pb2
from tests.cli.helpers import coalition_leaf, leaf, registration, registration_leaf, signed

ORIGIN = "coalition.test/log"
# A stand-in for a future statement type: known to STATEMENT_TYPES, but with no signer rule.
PARTY_TYPE = "application/vnd.coalition.v1.Party+proto"


def checkpoint_of(leaves: list[bytes]) -> Checkpoint:
    tree = merkle.CompactRange.empty()
    for item in leaves:
        tree.append(merkle.leaf_hash(item))
    return Checkpoint(ORIGIN, len(leaves), tree.root())


def replay_all(leaves: list[bytes], replay: LedgerReplay | None = None) -> LedgerReplay:
    replay = replay or LedgerReplay()
    for i, item in enumerate(leaves):
        replay.feed(i, item, leaf_hash=merkle.leaf_hash(item))
    return replay


@pytest.fixture
def keys() -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(4)]


@pytest.fixture
def leaves(keys: list[SigningKey]) -> list[bytes]:
    """The coalition's registration (keys[0], entry 0), then three contributors'."""
    return [coalition_leaf(keys[0], 1_700_000_000)] + [
        registration_leaf(k, 1_700_000_000 + i) for i, k in enumerate(keys[1:], 1)
    ]


@pytest.fixture
def other_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register a second statement type for the duration of a test."""
    monkeypatch.setitem(statements.STATEMENT_TYPES, PARTY_TYPE, party_pb2.Party)


def party_statement(key: SigningKey, *signers: SigningKey, seconds: int = 1_800_000_000) -> bytes:
    """A statement of the stand-in type, signed by ``signers``."""
    payload = party_pb2.Party(key_id=key.key_id, name="x").SerializeToString()
    sigs = tuple(dsse.Signature(s.key_id, s.sign(dsse.pae(PARTY_TYPE, payload))) for s in signers)
    return leaf(dsse.Envelope(PARTY_TYPE, payload, sigs), seconds)


def fails(replay: LedgerReplay, index: int, item: bytes, **kw: bytes) -> str:
    """Feed one leaf that must fail; return the message, checking nothing changed."""
    size, root, kinds = replay.size, replay.root(), replay.kinds
    with pytest.raises(AuditError) as info:
        replay.feed(index, item, **kw)
    assert info.value.index == index
    assert (replay.size, replay.root(), replay.kinds) == (size, root, kinds)
    return info.value.message


def test_a_valid_log_replays_to_the_checkpoint(keys: list[SigningKey], leaves: list[bytes]) -> None:
    replay = replay_all(leaves)
    result = replay.finish(checkpoint_of(leaves))
    assert result.size == 4
    assert result.root_hash == checkpoint_of(leaves).root_hash
    assert result.kinds == {"PartyRegistration": 4}
    assert result.parties == 4
    assert result.coalition_key == replay.coalition_key == keys[0].public_key
    assert replay.party_role(keys[0].key_id) == party_pb2.ROLE_COALITION
    assert replay.party_role(keys[1].key_id) == party_pb2.ROLE_CONTRIBUTOR
    assert result.last_integrated_time is not None
    assert result.last_integrated_time.timestamp() == 1_700_000_003
    assert result.previous_verified is False


def test_an_empty_log_has_no_coalition_registration() -> None:
    with pytest.raises(AuditError) as info:
        LedgerReplay().finish(Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT))
    assert info.value.message.startswith(
        "the log is empty: its entry 0 must be the coalition's own PartyRegistration"
    )


def test_tampered_leaf_bytes_do_not_match_the_claimed_hash(leaves: list[bytes]) -> None:
    replay = replay_all(leaves[:1])
    tampered = leaves[1][:-1] + bytes([leaves[1][-1] ^ 1])
    message = fails(replay, 1, tampered, leaf_hash=merkle.leaf_hash(leaves[1]))
    assert message.startswith("entry 1: the server's leaf hash ")


def test_bad_signature(keys: list[SigningKey], leaves: list[bytes]) -> None:
    record = ledger_pb2.LedgerLeaf.FromString(leaves[2])
    sig = bytearray(record.envelope.signatures[0].sig)
    sig[0] ^= 1
    record.envelope.signatures[0].sig = bytes(sig)
    bad = record.SerializeToString(deterministic=True)
    replay = replay_all(leaves[:2])
    assert fails(replay, 2, bad) == f"entry 2: signature by {keys[2].key_id} does not verify"


def test_registration_must_be_signed_by_the_key_it_registers(
    keys: list[SigningKey], leaves: list[bytes]
) -> None:
    stolen = leaf(signed(registration(keys[3]), keys[1]), 1_800_000_000)
    replay = replay_all(leaves[:2])
    assert fails(replay, 2, stolen) == (
        f"entry 2: the registration of {keys[3].key_id} is not signed by that key"
    )


def test_registration_with_a_payload_signed_under_another_key(keys: list[SigningKey]) -> None:
    # The signature's keyid claims the registered key but the bytes are another key's.
    reg = registration(keys[0])
    payload_type = statements.payload_type(party_pb2.PartyRegistration)
    payload = reg.SerializeToString()
    forged = dsse.Envelope(
        payload_type,
        payload,
        (dsse.Signature(keys[0].key_id, keys[1].sign(dsse.pae(payload_type, payload))),),
    )
    replay = replay_all([coalition_leaf(keys[2])])
    assert fails(replay, 1, leaf(forged)) == (
        f"entry 1: signature by {keys[0].key_id} does not verify"
    )


def test_co_signers_of_a_registration_are_refused(
    keys: list[SigningKey], leaves: list[bytes]
) -> None:
    newcomer = SigningKey.generate()
    replay = replay_all(leaves[:2])
    for co_signer, what in (
        (keys[3], "not a party registered before this entry"),
        (keys[1], "a contributor registered at entry 1"),
    ):
        item = leaf(signed(registration(newcomer), newcomer, co_signer), 1_800_000_000)
        assert fails(replay, 2, item) == (
            f"entry 2: a PartyRegistration must be signed only by the key it registers "
            f"({newcomer.key_id}), but it is also signed by {co_signer.key_id} ({what})"
        )


def test_statements_need_a_signer_registered_earlier(
    keys: list[SigningKey], leaves: list[bytes]
) -> None:
    def item(key: SigningKey, seconds: int) -> bytes:
        statement = items_pb2.ItemRegistration(commitment=bytes(32), nonce=key.public_key.raw)
        return leaf(signed(statement, key), seconds)

    replay = replay_all(leaves[:2])
    replay.feed(2, item(keys[1], 1_800_000_000))
    assert replay.kinds == {"PartyRegistration": 2, "ItemRegistration": 1}
    # keys[2] is not registered yet: its statement fails, even if it registers later.
    assert fails(replay, 3, item(keys[2], 1_800_000_000)) == (
        f"entry 3: an ItemRegistration must be signed by a registered contributor, but its "
        f"signer {keys[2].key_id} is not a party registered before this entry"
    )
    replay.feed(3, registration_leaf(keys[2], 1_800_000_001))
    replay.feed(4, item(keys[2], 1_800_000_002))


def test_a_statement_type_without_a_signer_rule_fails(
    keys: list[SigningKey], leaves: list[bytes], other_statements: None
) -> None:
    replay = replay_all(leaves[:2])
    assert fails(replay, 2, party_statement(keys[1], keys[1])) == (
        f"entry 2: no signer rule for statement type {PARTY_TYPE!r}: this auditor cannot "
        "tell who may sign it"
    )


def test_authorities_no_longer_sign_but_must_name_the_ledgers_coalition_key(
    keys: list[SigningKey], leaves: list[bytes]
) -> None:
    outsider = SigningKey.generate()
    # The older parameter: entry 0's key must be one of the authorities ...
    replay = LedgerReplay(authorities=[outsider.public_key])
    assert fails(replay, 0, leaves[0]) == (
        f"entry 0: the ledger registers coalition key {keys[0].key_id}, which is not one "
        f"of the trusted authorities ({outsider.key_id})"
    )
    replay = replay_all(leaves, LedgerReplay(authorities=[outsider.public_key, keys[0].public_key]))
    # ... and an authority that is not entry 0's key signs nothing.
    shredding = leaf(
        signed(access_pb2.ShreddingRecord(withdrawal_id="ab" * 16), outsider), 1_800_000_000
    )
    assert fails(replay, 4, shredding) == (
        f"entry 4: a ShreddingRecord must be signed by the coalition key, but its signer "
        f"{outsider.key_id} is not a party registered before this entry"
    )
    # The ledger's coalition key signs, and its signature is checked like any other.
    replay.feed(4, leaf(signed(access_pb2.ShreddingRecord(), keys[0]), 1_800_000_000))
    forged = ledger_pb2.LedgerLeaf.FromString(
        leaf(signed(access_pb2.ShreddingRecord(withdrawal_id="cd" * 16), outsider), 1_800_000_001)
    )
    forged.envelope.signatures[0].keyid = keys[0].key_id
    assert fails(replay, 5, forged.SerializeToString(deterministic=True)) == (
        f"entry 5: signature by {keys[0].key_id} does not verify"
    )


def test_unknown_statement_type(keys: list[SigningKey]) -> None:
    env = dsse.sign("application/vnd.coalition.v1.Mystery+proto", b"\x08\x01", keys[0])
    assert fails(LedgerReplay(), 0, leaf(env)) == (
        "entry 0: unknown statement type 'application/vnd.coalition.v1.Mystery+proto'"
    )


def test_malformed_and_non_canonical_leaves(keys: list[SigningKey], leaves: list[bytes]) -> None:
    replay = LedgerReplay()
    assert fails(replay, 0, b"\xff\xff\xff").startswith("entry 0: leaf is not a LedgerLeaf")
    # Unknown field 15 appended: it would round-trip through the parser unnoticed.
    assert "not canonically encoded" in fails(replay, 0, leaves[0] + b"\x78\x01")
    no_time = ledger_pb2.LedgerLeaf(envelope=dsse.sign("t", b"", keys[0]).to_proto())
    assert fails(replay, 0, no_time.SerializeToString(deterministic=True)) == (
        "entry 0: leaf has no integrated_time"
    )
    no_env = ledger_pb2.LedgerLeaf(integrated_time=Timestamp(seconds=1))
    assert fails(replay, 0, no_env.SerializeToString(deterministic=True)) == (
        "entry 0: leaf has no envelope"
    )
    bad_time = ledger_pb2.LedgerLeaf(
        integrated_time=Timestamp(seconds=1, nanos=-5),
        envelope=ledger_pb2.LedgerLeaf.FromString(leaves[0]).envelope,
    )
    assert fails(replay, 0, bad_time.SerializeToString(deterministic=True)) == (
        "entry 0: integrated_time is not a valid timestamp"
    )
    unsigned = ledger_pb2.LedgerLeaf.FromString(leaves[0])
    del unsigned.envelope.signatures[:]
    assert fails(replay, 0, unsigned.SerializeToString(deterministic=True)).startswith(
        "entry 0: malformed envelope: "
    )


def test_statement_payload_with_unknown_fields(keys: list[SigningKey]) -> None:
    payload_type = statements.payload_type(party_pb2.PartyRegistration)
    payload = registration(keys[0]).SerializeToString() + b"\xf8\x01\x01"  # field 31
    env = dsse.sign(payload_type, payload, keys[0])
    message = fails(LedgerReplay(), 0, leaf(env))
    # Caught by statements.parse_payload (or, failing that, by the replay's own check).
    assert message in (
        "entry 0: PartyRegistration payload is not canonically encoded",
        "entry 0: PartyRegistration payload has unknown fields",
    )


def test_integrated_time_never_decreases(keys: list[SigningKey]) -> None:
    replay = replay_all([coalition_leaf(keys[0], 1_700_000_100)])
    replay.feed(1, registration_leaf(keys[1], 1_700_000_100))  # equal is fine
    message = fails(replay, 2, registration_leaf(keys[2], 1_700_000_099))
    assert message == (
        "entry 2: integrated time 2023-11-14T22:14:59.000000000Z is before the previous "
        "entry's 2023-11-14T22:15:00.000000000Z"
    )


def test_entries_must_arrive_in_order(leaves: list[bytes]) -> None:
    replay = replay_all(leaves[:1])
    assert fails(replay, 2, leaves[2]) == (
        "entry 2: expected entry 1 next (the server sent entries out of order or skipped some)"
    )


def test_a_key_registers_once(keys: list[SigningKey], leaves: list[bytes]) -> None:
    replay = replay_all(leaves[:2])
    assert fails(replay, 2, registration_leaf(keys[1], 1_800_000_000)) == (
        f"entry 2: key {keys[1].key_id} is registered again (first registered at entry 1)"
    )
    # The coalition's key, too, cannot register again (as anything).
    assert fails(replay, 2, registration_leaf(keys[0], 1_800_000_000)) == (
        f"entry 2: key {keys[0].key_id} is registered again (first registered at entry 0)"
    )


def test_root_mismatch(leaves: list[bytes]) -> None:
    replay = replay_all(leaves)
    wrong = Checkpoint(ORIGIN, 4, b"\x01" * 32)
    with pytest.raises(AuditError) as info:
        replay.finish(wrong)
    computed = base64.b64encode(checkpoint_of(leaves).root_hash).decode()
    assert info.value.message == (
        f"root mismatch at size 4: computed {computed}, checkpoint {'AQEB' * 10 + 'AQE='}"
    )


def test_size_mismatch(leaves: list[bytes]) -> None:
    with pytest.raises(AuditError, match="served 3 entries but the checkpoint has size 4"):
        replay_all(leaves[:3]).finish(checkpoint_of(leaves))


def test_previous_tree_head_is_checked_at_its_size(leaves: list[bytes]) -> None:
    good = TreeHead(2, checkpoint_of(leaves[:2]).root_hash)
    result = replay_all(leaves, LedgerReplay(good)).finish(checkpoint_of(leaves))
    assert result.previous_verified is True

    forked = TreeHead(2, b"\x00" * 32)
    replay = replay_all(leaves[:1], LedgerReplay(forked))
    with pytest.raises(AuditError) as info:
        replay.feed(1, leaves[1])
    assert info.value.message.startswith(
        "log is not consistent with the checkpoint of size 2 you verified before: "
        "the replayed root at size 2 is "
    )
    assert replay.size == 1  # nothing changed

    with pytest.raises(AuditError, match="smaller than the size 9 you verified before"):
        LedgerReplay(TreeHead(9, b"\x00" * 32)).finish(checkpoint_of([]))
    with pytest.raises(AuditError, match="checkpoint of size 0"):
        LedgerReplay(TreeHead(0, b"\x00" * 32))
    LedgerReplay(TreeHead(0, merkle.EMPTY_ROOT))


def test_deferred_signatures_report_the_earliest_failure(
    keys: list[SigningKey], leaves: list[bytes]
) -> None:
    def corrupt(item: bytes) -> bytes:
        record = ledger_pb2.LedgerLeaf.FromString(item)
        record.envelope.signatures[0].sig = bytes(64)
        return record.SerializeToString(deterministic=True)

    bad = [leaves[0], corrupt(leaves[1]), leaves[2], corrupt(leaves[3])]
    replay = replay_all(bad, LedgerReplay(defer_signatures=True))  # nothing checked yet
    assert replay.deferred == 4
    checks = replay.take_deferred()
    assert replay.deferred == 0
    assert [c.entry for c in checks] == [0, 1, 2, 3]
    # Order of evaluation does not matter: the lowest index wins.
    expected = (1, f"entry 1: signature by {keys[1].key_id} does not verify")
    assert find_signature_failure(reversed(checks)) == expected
    assert find_signature_failure(checks[2:]) == (
        3,
        f"entry 3: signature by {keys[3].key_id} does not verify",
    )
    assert find_signature_failure(checks[:1] + checks[2:3]) is None
    with pytest.raises(AuditError, match=expected[1]):
        verify_signature_checks(checks)
    # finish() runs whatever is still deferred: a result is never returned unchecked.
    replay = replay_all(bad, LedgerReplay(defer_signatures=True))
    with pytest.raises(AuditError) as info:
        replay.finish(checkpoint_of(bad))
    assert info.value.index == 1
    good = replay_all(leaves, LedgerReplay(defer_signatures=True)).finish(checkpoint_of(leaves))
    assert good.size == 4


def test_signature_checks_and_errors_cross_process_boundaries() -> None:
    check = SignatureCheck(7, "ab" * 32, b"\x01" * 32, b"\x02" * 64, b"msg")
    assert pickle.loads(pickle.dumps(check)) == check
    error = pickle.loads(pickle.dumps(AuditError("entry 7: nope", index=7)))
    assert isinstance(error, AuditError)
    assert (error.message, error.index, str(error)) == ("entry 7: nope", 7, "entry 7: nope")
