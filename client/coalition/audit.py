"""Replaying the ledger: what an auditor checks, entry by entry, without trusting the server.

:class:`LedgerReplay` is fed the leaves of the log in index order and checks, for each:

* the leaf is a strictly (canonically) encoded ``coalition.v1.LedgerLeaf`` whose hash is the
  one the server claimed;
* its envelope is well formed and carries a statement type this version knows;
* who signed it, by the statement type's signer rule (below), and that every signature on
  it verifies;
* the log's integration time never goes backwards.

Signer rules. Entry 0 is the coalition's own ``PartyRegistration`` (role
``ROLE_COALITION``), signed by the key it registers: the replay learns the coalition's
statement key *from the ledger*, and a key the caller was told elsewhere (a pinned state, the
server's ``GetLogInfo``) must be that key. Then, for every entry, the signatures must be
exactly:

===================================================  =======================================
statement                                            signers
===================================================  =======================================
``PartyRegistration``                                the key it registers, only; role
                                                     contributor, lab or auditor (coalition
                                                     at entry 0 only); a key registers once
``ItemRegistration``, ``ConsentToken``,              one registered contributor (the author)
``Withdrawal``
``LeaseRequest``, ``DeletionReceipt``                one registered lab
``Agreement``                                        the registered lab its ``lab_key_id``
                                                     names, and the coalition key
``KeyRelease``, ``WithdrawalNotice``,                the coalition key, only
``ShreddingRecord``
``NegotiationRequest``                               one registered lab
``NegotiationMove``                                  one signature: the coalition key, or the
                                                     lab that opened the negotiation
``Ballot``, ``StrikePledge``, ``PledgeRetraction``   one registered contributor
``RatificationCall``, ``RatificationResult``,        the coalition key, only
``PayoutStatement``, ``StrikeExecution``
``Dispute``                                          one registered contributor whose items
                                                     the disputed agreement covers
``DisputeResponse``                                  one registered lab: the disputed
                                                     agreement's
===================================================  =======================================

"Registered" means by an entry *before* this one. A statement type without a rule fails, as
does any signature by a key the rule does not name.

Negotiation rules. A negotiation's id is the statement id of the ``NegotiationRequest``
that opened it (:func:`coalition.statements.statement_id`), and its lab is that request's
signer. A ``NegotiationMove`` must name a negotiation opened by an *earlier* entry, and be
signed by the coalition key or by that negotiation's lab: never by another lab. A ``Ballot``
must name a negotiation that the coalition put to its members by a ``RatificationCall`` in
an earlier entry. (Whether the voter's items are covered, double votes and windows are the
server's to enforce; the replay checks only what the order of the log proves.)

Dispute rules. An item's owner is the contributor who signed its ``ItemRegistration`` (its
id is :func:`coalition.client.item_id` of that key and the commitment), and an agreement
covers the owners of the items it lists (``covered_item_ids``), whatever happens to the items
later. A ``Dispute`` must name an ``Agreement`` logged by an *earlier* entry and be signed by
a member it covers; a ``DisputeResponse`` must answer a ``Dispute`` filed by an earlier entry
and be signed by the lab of the disputed agreement, never by another lab. The log proves both:
the agreement lists its items, and each item's registration names its owner.

It folds the leaf hashes into a :class:`~coalition.merkle.CompactRange`, and
:meth:`LedgerReplay.finish` compares the recomputed root with a signed checkpoint. A tree
head verified on an earlier run (``previous``) is checked on the way, the moment the replay
reaches its size, so a rewritten history is caught at the exact size it diverges from.

The class does no I/O: the caller fetches leaves however it likes. Signature checks, the
costly part, can be deferred (``defer_signatures=True``) and run elsewhere, e.g. in a process
pool, with :func:`find_signature_failure`; all inputs and results are picklable. The signer
rules need no cryptography (they compare key ids against the registrations replayed so far),
so they always run in :meth:`LedgerReplay.feed`, in order.
"""

from __future__ import annotations

import base64
import hmac
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from google.protobuf.message import DecodeError, Message

from coalition import dsse, merkle, statements
from coalition.checkpoint import Checkpoint
from coalition.client import item_id
from coalition.errors import CoalitionError, EnvelopeError, KeyFormatError, SignatureError
from coalition.keys import PublicKey, key_id
from coalition.v1 import (
    access_pb2,
    disputes_pb2,
    envelope_pb2,
    items_pb2,
    ledger_pb2,
    negotiation_pb2,
    party_pb2,
)

__all__ = [
    "AuditError",
    "ExpectedKey",
    "LedgerReplay",
    "ReplayResult",
    "SignatureCheck",
    "TreeHead",
    "find_signature_failure",
    "verify_signature_checks",
]

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS: Final = -62_135_596_800
_MAX_SECONDS: Final = 253_402_300_799
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_CONTRIBUTOR: Final = party_pb2.ROLE_CONTRIBUTOR
_LAB: Final = party_pb2.ROLE_LAB
_AUDITOR: Final = party_pb2.ROLE_AUDITOR
_COALITION: Final = party_pb2.ROLE_COALITION
# Roles a party may register with after entry 0 (which alone registers the coalition).
_PARTY_ROLES: Final = frozenset((_CONTRIBUTOR, _LAB, _AUDITOR))
# Statements signed by exactly one party holding one of these roles, by message name. (The
# coalition role is entry 0's alone, so "the coalition" means the ledger's coalition key.)
_SOLE_SIGNER: Final[Mapping[str, frozenset[party_pb2.Role.ValueType]]] = {
    "ItemRegistration": frozenset((_CONTRIBUTOR,)),
    "ConsentToken": frozenset((_CONTRIBUTOR,)),
    "Withdrawal": frozenset((_CONTRIBUTOR,)),
    "LeaseRequest": frozenset((_LAB,)),
    "DeletionReceipt": frozenset((_LAB,)),
    "KeyRelease": frozenset((_COALITION,)),
    "WithdrawalNotice": frozenset((_COALITION,)),
    "ShreddingRecord": frozenset((_COALITION,)),
    # Collective bargaining (negotiation.proto), as its comments say who signs.
    "NegotiationRequest": frozenset((_LAB,)),
    "NegotiationMove": frozenset((_LAB, _COALITION)),
    "RatificationCall": frozenset((_COALITION,)),
    "Ballot": frozenset((_CONTRIBUTOR,)),
    "RatificationResult": frozenset((_COALITION,)),
    "PayoutStatement": frozenset((_COALITION,)),
    # Strikes (strike.proto): members pledge and retract, the coalition executes.
    "StrikePledge": frozenset((_CONTRIBUTOR,)),
    "PledgeRetraction": frozenset((_CONTRIBUTOR,)),
    "StrikeExecution": frozenset((_COALITION,)),
    # Disputes (disputes.proto): a covered member files, the agreement's lab answers; the
    # dispute rules below narrow these down to that member and that lab.
    "Dispute": frozenset((_CONTRIBUTOR,)),
    "DisputeResponse": frozenset((_LAB,)),
}
# How a rule names the one signer it wants.
_WANTED: Final[Mapping[frozenset[party_pb2.Role.ValueType], str]] = {
    frozenset((_CONTRIBUTOR,)): "a registered contributor",
    frozenset((_LAB,)): "a registered lab",
    frozenset((_COALITION,)): "the coalition key",
    frozenset((_LAB, _COALITION)): "a registered lab or the coalition key",
}
# How a message describes a registered party.
_PARTY_WORD: Final[Mapping[party_pb2.Role.ValueType, str]] = {
    _CONTRIBUTOR: "a contributor",
    _LAB: "a lab",
    _AUDITOR: "an auditor",
    _COALITION: "the coalition's key",
}


class AuditError(CoalitionError):
    """The ledger failed an audit check; the message says exactly where and how.

    ``index`` is the entry at fault when one entry is to blame, else None.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index

    def __reduce__(self) -> tuple[object, ...]:
        # Keep ``index`` when the error crosses a process boundary.
        return (_make_audit_error, (self.message, self.index))


def _make_audit_error(message: str, index: int | None) -> AuditError:
    return AuditError(message, index=index)


@dataclass(frozen=True)
class TreeHead:
    """A tree size and its root hash, e.g. the checkpoint an earlier audit verified."""

    size: int
    root_hash: bytes


class SignatureCheck(NamedTuple):
    """One deferred Ed25519 check: does ``public_key`` sign ``message`` as ``signature``?

    A plain tuple of bytes and ints, so that it pickles cheaply to a worker process.
    """

    entry: int
    key_id: str
    public_key: bytes
    signature: bytes
    message: bytes


def find_signature_failure(checks: Iterable[SignatureCheck]) -> tuple[int, str] | None:
    """The lowest-index failing check as ``(index, message)``, or None if all verify.

    A module-level pure function of picklable values: suitable for a process pool.
    """
    failure: tuple[int, str] | None = None
    for check in checks:
        if failure is not None and check.entry >= failure[0]:
            continue
        try:
            PublicKey(check.public_key).verify(check.signature, check.message)
        except (SignatureError, KeyFormatError):
            failure = (check.entry, _bad_signature(check.entry, check.key_id))
    return failure


def verify_signature_checks(checks: Iterable[SignatureCheck]) -> None:
    """Raise AuditError for the lowest-index check that fails; return if all verify."""
    failure = find_signature_failure(checks)
    if failure is not None:
        raise AuditError(failure[1], index=failure[0])


@dataclass(frozen=True)
class ReplayResult:
    """What a successful replay established."""

    size: int
    """Number of entries replayed (the checkpoint's size)."""
    root_hash: bytes
    """Recomputed root, equal to the checkpoint's."""
    kinds: Mapping[str, int]
    """Number of entries of each statement kind (``PartyRegistration``, ...)."""
    parties: int
    """Number of parties registered in the replayed log."""
    last_integrated_time: datetime | None
    """Integration time of the last entry (None for an empty log)."""
    previous_verified: bool
    """True when a previously verified tree head was given and matched."""
    coalition_key: PublicKey | None = None
    """The coalition's statement key, as entry 0 registers it (None only for no entries)."""


class ExpectedKey(NamedTuple):
    """A coalition key the caller was told about elsewhere, and where: entry 0 must match.

    ``source`` completes a sentence, e.g. ``"the state file /x/audit.json"`` or
    ``"the server's GetLogInfo"``; ``public_key`` is the raw key that source names.
    """

    source: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class _Party:
    index: int
    public_key: PublicKey
    role: party_pb2.Role.ValueType


@dataclass(frozen=True, slots=True)
class _Negotiation:
    """A negotiation opened in the log: where, and by which lab."""

    index: int
    lab_key_id: str


@dataclass(frozen=True, slots=True)
class _NegotiationUpdate:
    """What an entry adds to the negotiation state, applied once every check passed."""

    negotiation_id: str
    negotiation: _Negotiation | None = None
    """Set for a NegotiationRequest: the negotiation it opens."""
    ratification_index: int | None = None
    """Set for a RatificationCall: the entry that puts the negotiation to a vote."""


@dataclass(frozen=True, slots=True)
class _Agreement:
    """An agreement logged in the ledger: where, its lab, and the members it covers."""

    index: int
    lab_key_id: str
    members: frozenset[str]
    items: int


@dataclass(frozen=True, slots=True)
class _Dispute:
    """A dispute filed in the ledger: where, and about which agreement."""

    index: int
    agreement_id: str


@dataclass(frozen=True, slots=True)
class _CoverageUpdate:
    """What an entry adds to the item, agreement and dispute state (applied once every
    check passed)."""

    item: tuple[bytes, str] | None = None
    """Set for an ItemRegistration: (the item id's bytes, its owner)."""
    agreement: tuple[str, _Agreement] | None = None
    """Set for an Agreement: its id and what it covers."""
    dispute: tuple[str, _Dispute] | None = None
    """Set for a Dispute: its id and agreement."""


def _item_key(value: str) -> bytes | None:
    """An item id as 16 bytes (compact for large ledgers), or None if it is not one."""
    if len(value) != 32:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


class LedgerReplay:
    """Checks a ledger leaf by leaf; see the module docstring for what is checked.

    Feed every leaf from index 0 with :meth:`feed`, then call :meth:`finish` with the signed
    checkpoint the leaves should add up to. Any failed check raises :class:`AuditError`, and
    the replay must then be abandoned. :meth:`feed` changes no state when it raises.
    """

    def __init__(
        self,
        previous: TreeHead | None = None,
        *,
        expected_coalition_keys: Iterable[ExpectedKey] = (),
        authorities: Iterable[PublicKey] = (),
        defer_signatures: bool = False,
    ) -> None:
        """``previous``: a tree head verified before, which this log must extend.

        ``expected_coalition_keys``: the coalition key as other sources name it (a pinned
        state file, the server's ``GetLogInfo``). The replay takes the coalition's key from
        the ledger's entry 0; each of these must be that key, or entry 0 fails naming the
        source. An empty key means the source names none and is not compared.

        ``authorities``: the older way of saying the same; if any are given, the key entry 0
        registers must be one of them. Neither parameter lets a key sign anything: only the
        ledger's own registrations do.

        ``defer_signatures``: collect signature checks instead of running them; the caller
        then drains them with :meth:`take_deferred` and runs them (in any process) with
        :func:`find_signature_failure`. Registrations are trusted for the rest of the replay
        before their own signature has been checked, which is sound because any failure,
        once found, fails the whole audit and the lowest-index failure is the one reported.
        """
        if previous is not None and (not isinstance(previous.size, int) or previous.size < 0):
            raise ValueError("previous tree size must be a non-negative int")
        self._range = merkle.CompactRange.empty()
        self._previous = previous
        self._previous_verified = False
        self._parties: dict[str, _Party] = {}
        self._coalition: _Party | None = None
        self._negotiations: dict[str, _Negotiation] = {}
        # Negotiation id -> the entry of its first RatificationCall.
        self._ratifications: dict[str, int] = {}
        # Item id (bytes) -> the contributor who registered it; agreements and disputes.
        self._item_owners: dict[bytes, str] = {}
        self._agreements: dict[str, _Agreement] = {}
        self._disputes: dict[str, _Dispute] = {}
        self._expected = [
            ExpectedKey(e.source, bytes(e.public_key)) for e in expected_coalition_keys
        ]
        self._authorities = {key.key_id: key for key in authorities}
        self._kinds: Counter[str] = Counter()
        self._last_time: tuple[int, int] | None = None
        self._defer = defer_signatures
        self._deferred: list[SignatureCheck] = []
        if previous is not None and previous.size == 0:
            self._check_previous(merkle.EMPTY_ROOT)

    @property
    def size(self) -> int:
        """Number of entries fed so far: the index the next leaf must have."""
        return self._range.size

    def root(self) -> bytes:
        """Root hash of the entries fed so far."""
        return self._range.root()

    @property
    def kinds(self) -> Mapping[str, int]:
        """Entries fed so far, counted by statement kind."""
        return dict(self._kinds)

    @property
    def coalition_key(self) -> PublicKey | None:
        """The coalition's statement key as entry 0 registers it; None before entry 0."""
        return self._coalition.public_key if self._coalition is not None else None

    def party_key(self, key_id: str) -> PublicKey | None:
        """The signing key of a party registered in the entries fed so far, or None."""
        party = self._parties.get(key_id)
        return party.public_key if party is not None else None

    def party_role(self, key_id: str) -> party_pb2.Role.ValueType | None:
        """The role of a party registered in the entries fed so far, or None."""
        party = self._parties.get(key_id)
        return party.role if party is not None else None

    @property
    def deferred(self) -> int:
        """Number of signature checks deferred and not yet taken."""
        return len(self._deferred)

    def take_deferred(self) -> list[SignatureCheck]:
        """Hand over (and forget) the signature checks deferred so far, in index order."""
        deferred, self._deferred = self._deferred, []
        return deferred

    def feed(self, index: int, leaf: bytes, *, leaf_hash: bytes | None = None) -> bytes:
        """Check entry ``index`` (which must be the next one) and fold it into the tree.

        ``leaf`` is the serialised LedgerLeaf as the server sent it; ``leaf_hash``, if given,
        is the hash the server claimed for it. Returns the recomputed leaf hash.
        """
        if index != self._range.size:
            raise AuditError(
                f"entry {index}: expected entry {self._range.size} next "
                "(the server sent entries out of order or skipped some)",
                index=index,
            )
        computed = merkle.leaf_hash(leaf)
        if leaf_hash is not None and not hmac.compare_digest(computed, leaf_hash):
            raise AuditError(
                f"entry {index}: the server's leaf hash {leaf_hash.hex()} is not the hash "
                f"of the leaf it served ({computed.hex()})",
                index=index,
            )
        record = _parse_leaf(index, leaf)
        stamp = (record.integrated_time.seconds, record.integrated_time.nanos)
        if self._last_time is not None and stamp < self._last_time:
            raise AuditError(
                f"entry {index}: integrated time {_format_stamp(stamp)} is before the "
                f"previous entry's {_format_stamp(self._last_time)}",
                index=index,
            )
        envelope = _envelope(index, record.envelope)
        statement = _statement(index, envelope)
        keys, registered = self._signer_keys(index, envelope, statement)
        update = self._negotiation_rules(index, envelope, statement)
        coverage = self._coverage_rules(index, envelope, statement)
        message = envelope.pae()
        checks: list[SignatureCheck] = []
        if self._defer:
            checks = [
                SignatureCheck(index, s.keyid, key.raw, s.sig, message)
                for s, key in zip(envelope.signatures, keys, strict=True)
            ]
        else:
            # Inline checks reuse the loaded PublicKey objects (no re-parsing).
            for s, key in zip(envelope.signatures, keys, strict=True):
                try:
                    key.verify(s.sig, message)
                except SignatureError:
                    raise AuditError(_bad_signature(index, s.keyid), index=index) from None
        if self._previous is not None and index + 1 == self._previous.size:
            # Check the earlier tree head on a copy, so a failure leaves no state changed.
            tentative = self._range.copy()
            tentative.push(computed)
            self._check_previous(tentative.root())
        # Every check passed (or is deferred): from here on, only state changes.
        if registered is not None:
            self._parties[registered.public_key.key_id] = registered
            if registered.role == _COALITION:
                self._coalition = registered
        if update is not None:
            if update.negotiation is not None:
                self._negotiations.setdefault(update.negotiation_id, update.negotiation)
            if update.ratification_index is not None:
                self._ratifications.setdefault(update.negotiation_id, update.ratification_index)
        if coverage is not None:
            if coverage.item is not None:
                self._item_owners.setdefault(*coverage.item)
            if coverage.agreement is not None:
                self._agreements.setdefault(*coverage.agreement)
            if coverage.dispute is not None:
                self._disputes.setdefault(*coverage.dispute)
        self._deferred.extend(checks)
        self._kinds[statements.kind(envelope.payload_type)] += 1
        self._last_time = stamp
        self._range.push(computed)
        return computed

    def finish(self, checkpoint: Checkpoint) -> ReplayResult:
        """Check that the entries fed add up to ``checkpoint`` (already signature-checked).

        Runs any signature checks still deferred, so a result is never returned unchecked.
        """
        if self._deferred:
            verify_signature_checks(self.take_deferred())
        if self._previous is not None and self._previous.size > checkpoint.size:
            raise AuditError(
                f"the checkpoint's size {checkpoint.size} is smaller than the size "
                f"{self._previous.size} you verified before: the log was truncated or rolled back"
            )
        if self._range.size != checkpoint.size:
            raise AuditError(
                f"the server served {self._range.size} entries but the checkpoint has size "
                f"{checkpoint.size}"
            )
        root = self._range.root()
        if not hmac.compare_digest(root, checkpoint.root_hash):
            raise AuditError(
                f"root mismatch at size {checkpoint.size}: computed {_b64(root)}, "
                f"checkpoint {_b64(checkpoint.root_hash)}"
            )
        if self._coalition is None:
            raise AuditError(
                "the log is empty: its entry 0 must be the coalition's own PartyRegistration "
                "(ROLE_COALITION), so there is no coalition key to audit against",
                index=0,
            )
        last = None
        if self._last_time is not None:
            seconds, nanos = self._last_time
            last = _to_datetime(seconds, nanos)
        return ReplayResult(
            size=self._range.size,
            root_hash=root,
            kinds=dict(self._kinds),
            parties=len(self._parties),
            last_integrated_time=last,
            previous_verified=self._previous_verified,
            coalition_key=self._coalition.public_key,
        )

    # --- signer rules (sequential, no cryptography) ----------------------------------------

    def _signer_keys(
        self, index: int, envelope: dsse.Envelope, statement: Message
    ) -> tuple[list[PublicKey], _Party | None]:
        """The key of each signature (in order), and the party a registration registers.

        Applies the statement type's signer rule; raises AuditError naming the entry and
        the rule it breaks.
        """
        if isinstance(statement, party_pb2.PartyRegistration):
            return self._registration(index, envelope, statement)
        if index == 0:
            raise AuditError(
                f"entry 0: the log must begin with the coalition's own PartyRegistration "
                f"(ROLE_COALITION), but entry 0 is {_a(statements.kind(envelope.payload_type))}",
                index=0,
            )
        if isinstance(statement, access_pb2.Agreement):
            return self._agreement(index, envelope, statement), None
        roles = _SOLE_SIGNER.get(statement.DESCRIPTOR.name)
        if roles is None:
            raise AuditError(
                f"entry {index}: no signer rule for statement type "
                f"{envelope.payload_type!r}: this auditor cannot tell who may sign it",
                index=index,
            )
        return [self._sole_signer(index, envelope, roles)], None

    def _registration(
        self, index: int, envelope: dsse.Envelope, statement: party_pb2.PartyRegistration
    ) -> tuple[list[PublicKey], _Party]:
        """Rule: self-signed (only) by a key not registered before, with an allowed role."""
        try:
            own = PublicKey(bytes(statement.signing_key))
        except KeyFormatError:
            raise AuditError(
                f"entry {index}: the registration's signing_key is not an Ed25519 key",
                index=index,
            ) from None
        role = statement.role
        if index == 0 and role != _COALITION:
            raise AuditError(
                f"entry 0: the log must begin with the coalition's own PartyRegistration "
                f"(ROLE_COALITION), but entry 0 registers {own.key_id} with role "
                f"{_role_name(role)}",
                index=0,
            )
        if index > 0 and role == _COALITION:
            raise AuditError(
                f"entry {index}: only entry 0 may register the coalition (ROLE_COALITION), "
                f"but this entry registers {own.key_id} with that role",
                index=index,
            )
        if index > 0 and role not in _PARTY_ROLES:
            raise AuditError(
                f"entry {index}: a PartyRegistration's role must be ROLE_CONTRIBUTOR, "
                f"ROLE_LAB or ROLE_AUDITOR, but {own.key_id} registers with role "
                f"{_role_name(role)}",
                index=index,
            )
        first = self._parties.get(own.key_id)
        if first is not None:
            raise AuditError(
                f"entry {index}: key {own.key_id} is registered again "
                f"(first registered at entry {first.index})",
                index=index,
            )
        if all(s.keyid != own.key_id for s in envelope.signatures):
            raise AuditError(
                f"entry {index}: the registration of {own.key_id} is not signed by that key",
                index=index,
            )
        for s in envelope.signatures:
            if s.keyid != own.key_id:
                raise AuditError(
                    f"entry {index}: a PartyRegistration must be signed only by the key it "
                    f"registers ({own.key_id}), but it is also signed by {s.keyid} "
                    f"({self._describe(s.keyid)})",
                    index=index,
                )
        if index == 0:
            self._check_expected(own)
        return [own], _Party(index, own, role)

    def _check_expected(self, ledger_key: PublicKey) -> None:
        """Entry 0's coalition key must be the one every other source names."""
        for expected in self._expected:
            if expected.public_key and not hmac.compare_digest(expected.public_key, ledger_key.raw):
                raise AuditError(
                    f"entry 0: the ledger registers coalition key {ledger_key.key_id} "
                    f"({_b64(ledger_key.raw)}), but {expected.source} names coalition key "
                    f"{_key_id_or_raw(expected.public_key)}",
                    index=0,
                )
        if self._authorities and ledger_key.key_id not in self._authorities:
            raise AuditError(
                f"entry 0: the ledger registers coalition key {ledger_key.key_id}, which is "
                f"not one of the trusted authorities ({', '.join(sorted(self._authorities))})",
                index=0,
            )

    def _sole_signer(
        self,
        index: int,
        envelope: dsse.Envelope,
        roles: frozenset[party_pb2.Role.ValueType],
    ) -> PublicKey:
        """Rule: exactly one signature, by a party registered earlier with one of ``roles``."""
        kind = statements.kind(envelope.payload_type)
        wanted = _WANTED[roles]
        if len(envelope.signatures) != 1:
            signers = ", ".join(
                f"{s.keyid} ({self._describe(s.keyid)})" for s in envelope.signatures
            )
            raise AuditError(
                f"entry {index}: {_a(kind)} must carry exactly one signature, by {wanted}, "
                f"but it has {len(envelope.signatures)}: {signers}",
                index=index,
            )
        signer = envelope.signatures[0].keyid
        party = self._parties.get(signer)
        if party is None or party.role not in roles:
            raise AuditError(
                f"entry {index}: {_a(kind)} must be signed by {wanted}, but its signer "
                f"{signer} is {self._describe(signer)}",
                index=index,
            )
        return party.public_key

    def _agreement(
        self, index: int, envelope: dsse.Envelope, statement: access_pb2.Agreement
    ) -> list[PublicKey]:
        """Rule: signed by the registered lab its lab_key_id names and by the coalition."""
        assert self._coalition is not None  # entry 0 registered it
        coalition = self._coalition.public_key.key_id
        lab_id = statement.lab_key_id
        lab = self._parties.get(lab_id)
        if lab is None or lab.role != _LAB:
            named = f"{lab_id}, which is {self._describe(lab_id)}" if lab_id else "no key"
            raise AuditError(
                f"entry {index}: an Agreement must be signed by the registered lab its "
                f"lab_key_id names, but lab_key_id names {named}",
                index=index,
            )
        for s in envelope.signatures:
            if s.keyid not in (lab_id, coalition):
                raise AuditError(
                    f"entry {index}: an Agreement must be signed only by its lab and the "
                    f"coalition key, but it is also signed by {s.keyid} "
                    f"({self._describe(s.keyid)})",
                    index=index,
                )
        signers = {s.keyid for s in envelope.signatures}
        if lab_id not in signers:
            raise AuditError(
                f"entry {index}: an Agreement must be signed by its lab and the coalition "
                f"key, but the signature of its lab {lab_id} is missing",
                index=index,
            )
        if coalition not in signers:
            raise AuditError(
                f"entry {index}: an Agreement must be signed by its lab and the coalition "
                f"key, but the coalition's signature ({coalition}) is missing",
                index=index,
            )
        return [
            lab.public_key if s.keyid == lab_id else self._coalition.public_key
            for s in envelope.signatures
        ]

    # --- negotiation rules (sequential, no cryptography) -----------------------------------

    def _negotiation_rules(
        self, index: int, envelope: dsse.Envelope, statement: Message
    ) -> _NegotiationUpdate | None:
        """Tie negotiation statements to the negotiation they are about (module docstring).

        Runs after the signer rules, so the envelope has exactly the one signature its rule
        allows. Returns what the entry adds to the negotiation state (not applied here, so a
        failing entry changes nothing); raises AuditError naming the entry and the rule.
        """
        if isinstance(statement, negotiation_pb2.NegotiationRequest):
            lab = envelope.signatures[0].keyid
            return _NegotiationUpdate(statements.statement_id(envelope), _Negotiation(index, lab))
        if isinstance(statement, negotiation_pb2.NegotiationMove):
            self._check_move(index, envelope, statement)
            return None
        if isinstance(statement, negotiation_pb2.RatificationCall):
            return _NegotiationUpdate(statement.negotiation_id, ratification_index=index)
        if isinstance(statement, negotiation_pb2.Ballot):
            nid = statement.negotiation_id
            if nid not in self._ratifications:
                raise AuditError(
                    f"entry {index}: a Ballot must be cast on a negotiation put to "
                    f"ratification by an earlier RatificationCall, but negotiation "
                    f"{_id_text(nid)} has no RatificationCall before this entry",
                    index=index,
                )
        return None

    def _check_move(
        self, index: int, envelope: dsse.Envelope, move: negotiation_pb2.NegotiationMove
    ) -> None:
        """Rule: about a negotiation opened earlier; by the coalition or its lab."""
        assert self._coalition is not None  # entry 0 registered it
        nid = move.negotiation_id
        negotiation = self._negotiations.get(nid)
        if negotiation is None:
            raise AuditError(
                f"entry {index}: a NegotiationMove must be about a negotiation opened by an "
                f"earlier NegotiationRequest, but negotiation {_id_text(nid)} was not opened "
                "before this entry",
                index=index,
            )
        signer = envelope.signatures[0].keyid
        if signer in (negotiation.lab_key_id, self._coalition.public_key.key_id):
            return
        raise AuditError(
            f"entry {index}: a NegotiationMove in negotiation {nid} must be signed by the "
            f"coalition key or the lab that opened it ({negotiation.lab_key_id}, at entry "
            f"{negotiation.index}), but its signer {signer} is {self._describe(signer)}",
            index=index,
        )

    # --- dispute rules (sequential, no cryptography) -------------------------------------

    def _coverage_rules(
        self, index: int, envelope: dsse.Envelope, statement: Message
    ) -> _CoverageUpdate | None:
        """Who owns which item, what each agreement covers, and the dispute rules (module
        docstring). Runs after the signer rules (one signature where the rule wants one);
        returns what the entry adds, not applied here; raises AuditError on a broken rule."""
        if isinstance(statement, items_pb2.ItemRegistration):
            # The server derives ids the same way. The owner is interned: one string per
            # member, not one per item, as ledgers hold millions of items.
            owner = sys.intern(envelope.signatures[0].keyid)
            key = _item_key(item_id(owner, bytes(statement.commitment)))
            return _CoverageUpdate(item=(key, owner)) if key is not None else None
        if isinstance(statement, access_pb2.Agreement):
            members: set[str] = set()
            for covered in statement.covered_item_ids:
                key = _item_key(covered)
                holder = self._item_owners.get(key) if key is not None else None
                if holder is not None:
                    members.add(holder)
            agreement = _Agreement(
                index, statement.lab_key_id, frozenset(members), len(statement.covered_item_ids)
            )
            return _CoverageUpdate(agreement=(statements.statement_id(envelope), agreement))
        if isinstance(statement, disputes_pb2.Dispute):
            return self._check_dispute(index, envelope, statement)
        if isinstance(statement, disputes_pb2.DisputeResponse):
            self._check_dispute_response(index, envelope, statement)
        return None

    def _check_dispute(
        self, index: int, envelope: dsse.Envelope, dispute: disputes_pb2.Dispute
    ) -> _CoverageUpdate:
        """Rule: about an agreement logged earlier, by a member it covers."""
        aid = dispute.agreement_id
        agreement = self._agreements.get(aid)
        if agreement is None:
            raise AuditError(
                f"entry {index}: a Dispute must be about an Agreement logged by an earlier "
                f"entry, but agreement {_id_text(aid)} was not logged before this entry",
                index=index,
            )
        signer = envelope.signatures[0].keyid
        if signer not in agreement.members:
            raise AuditError(
                f"entry {index}: a Dispute about agreement {aid} (entry {agreement.index}) "
                f"must be signed by a member whose items it covers, but its signer {signer} "
                f"({self._describe(signer)}) owns none of the {agreement.items} items it "
                "covers",
                index=index,
            )
        return _CoverageUpdate(dispute=(statements.statement_id(envelope), _Dispute(index, aid)))

    def _check_dispute_response(
        self, index: int, envelope: dsse.Envelope, response: disputes_pb2.DisputeResponse
    ) -> None:
        """Rule: answers a dispute filed earlier; signed by the disputed agreement's lab."""
        did = response.dispute_id
        dispute = self._disputes.get(did)
        if dispute is None:
            raise AuditError(
                f"entry {index}: a DisputeResponse must answer a Dispute filed by an earlier "
                f"entry, but dispute {_id_text(did)} was not filed before this entry",
                index=index,
            )
        agreement = self._agreements[dispute.agreement_id]
        signer = envelope.signatures[0].keyid
        if signer != agreement.lab_key_id:
            raise AuditError(
                f"entry {index}: a DisputeResponse to dispute {did} (entry {dispute.index}) "
                f"must be signed by the lab of agreement {dispute.agreement_id} "
                f"({agreement.lab_key_id}), but its signer {signer} is "
                f"{self._describe(signer)}",
                index=index,
            )

    def _describe(self, key_id_: str) -> str:
        """What a key is, as of the entries fed so far (for messages)."""
        party = self._parties.get(key_id_)
        if party is None:
            return "not a party registered before this entry"
        return f"{_PARTY_WORD.get(party.role, 'a party')} registered at entry {party.index}"

    def _check_previous(self, root: bytes) -> None:
        """Compare the replayed root at the earlier tree head's size with its root."""
        assert self._previous is not None
        if not hmac.compare_digest(root, self._previous.root_hash):
            size = self._previous.size
            raise AuditError(
                f"log is not consistent with the checkpoint of size {size} you verified "
                f"before: the replayed root at size {size} is {_b64(root)}, you verified "
                f"{_b64(self._previous.root_hash)}"
            )
        self._previous_verified = True


def _a(kind: str) -> str:
    """``kind`` with its indefinite article, for messages."""
    return f"an {kind}" if kind[:1] in "AEIOU" else f"a {kind}"


def _id_text(value: str) -> str:
    """A statement id for messages (``""`` shown as such)."""
    return value if value else '""'


def _role_name(role: party_pb2.Role.ValueType) -> str:
    try:
        return party_pb2.Role.Name(role)
    except ValueError:
        return f"{role} (unknown)"


def _key_id_or_raw(raw: bytes) -> str:
    try:
        return f"{key_id(raw)} ({_b64(raw)})"
    except KeyFormatError:
        return f"{_b64(raw)} (not a 32-byte key)"


def _parse_leaf(index: int, leaf: bytes) -> ledger_pb2.LedgerLeaf:
    """Parse a leaf strictly: canonical encoding, no unknown fields, required fields set."""
    try:
        record = ledger_pb2.LedgerLeaf.FromString(leaf)
    except DecodeError as exc:
        raise AuditError(f"entry {index}: leaf is not a LedgerLeaf: {exc}", index=index) from None
    # Unknown fields survive a parse/serialise round trip, so drop them before comparing:
    # bytes no verifier understands must not ride along in the ledger.
    canonical = ledger_pb2.LedgerLeaf()
    canonical.CopyFrom(record)
    canonical.DiscardUnknownFields()
    if canonical.SerializeToString(deterministic=True) != leaf:
        raise AuditError(
            f"entry {index}: leaf is not canonically encoded (unknown fields or "
            "non-deterministic encoding)",
            index=index,
        )
    if not record.HasField("integrated_time"):
        raise AuditError(f"entry {index}: leaf has no integrated_time", index=index)
    if not record.HasField("envelope"):
        raise AuditError(f"entry {index}: leaf has no envelope", index=index)
    ts = record.integrated_time
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise AuditError(f"entry {index}: integrated_time is not a valid timestamp", index=index)
    return record


def _envelope(index: int, msg: envelope_pb2.Envelope) -> dsse.Envelope:
    try:
        return dsse.Envelope.from_proto(msg)
    except EnvelopeError as exc:
        raise AuditError(f"entry {index}: malformed envelope: {exc}", index=index) from None


def _statement(index: int, envelope: dsse.Envelope) -> Message:
    """Decode the statement strictly; unknown statement types fail the audit."""
    if envelope.payload_type not in statements.STATEMENT_TYPES:
        raise AuditError(
            f"entry {index}: unknown statement type {envelope.payload_type!r}", index=index
        )
    try:
        statement = statements.decode_statement(envelope)
    except EnvelopeError as exc:
        raise AuditError(f"entry {index}: {exc}", index=index) from None
    # parse_payload's canonical check keeps unknown fields (they round-trip); drop them.
    canonical = type(statement)()
    canonical.CopyFrom(statement)
    canonical.DiscardUnknownFields()
    if canonical.SerializeToString(deterministic=True) != envelope.payload:
        raise AuditError(
            f"entry {index}: {statements.kind(envelope.payload_type)} payload has unknown fields",
            index=index,
        )
    return statement


def _bad_signature(index: int, key_id: str) -> str:
    return f"entry {index}: signature by {key_id} does not verify"


def _to_datetime(seconds: int, nanos: int) -> datetime:
    # Arithmetic from the epoch works for the whole Timestamp range, unlike fromtimestamp.
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def _format_stamp(stamp: tuple[int, int]) -> str:
    seconds, nanos = stamp
    base = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
