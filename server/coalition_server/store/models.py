"""SQLAlchemy 2 models: the ledger's tables and the indexes over them.

Foreign keys to ``log_entries`` are deferred to commit: a submission's effect writes its rows
before the sequencer writes the batch's leaves, in the same transaction.

The ledger tables are append-only; the sequencer is the only writer. Everything needed to
serve a proof is stored: ``merkle_nodes`` holds the hash of every perfect subtree, so an
inclusion or consistency proof is one indexed read of O(log n) rows at any tree size.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER, and PostgreSQL wants BIGINT for a log that grows.
BigInt = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of every Coalition table."""


class LogIdentity(Base):
    """The one log this database holds: origin and verifier key, fixed at first start."""

    __tablename__ = "log_identity"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    origin: Mapped[str] = mapped_column(Text)
    verifier_key: Mapped[str] = mapped_column(Text)
    coalition_public_key: Mapped[bytes] = mapped_column(LargeBinary(32))


class TreeHead(Base):
    """The current tree head: a single row, locked by the sequencer for every batch."""

    __tablename__ = "tree_head"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    size: Mapped[int] = mapped_column(BigInt)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # Integration times never go backwards, whichever replica sequences.
    last_integrated_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LogEntry(Base):
    """One leaf: the exact bytes of a LedgerLeaf and what it is about."""

    __tablename__ = "log_entries"

    idx: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=False)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    leaf: Mapped[bytes] = mapped_column(LargeBinary)
    # SHA-256 of PAE(payload_type, payload): the same statement is never logged twice.
    statement_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    kind: Mapped[str] = mapped_column(String(128))
    signer_key_id: Mapped[str] = mapped_column(String(64))
    integrated_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_log_entries_kind_idx", "kind", "idx"),)


class EntrySubject(Base):
    """Index of entries by the parties they concern (signer and any named party)."""

    __tablename__ = "entry_subjects"

    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    idx: Mapped[int] = mapped_column(
        BigInt,
        ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED"),
        primary_key=True,
        autoincrement=False,
    )


class MerkleNode(Base):
    """Hash of the perfect subtree of 2**level leaves starting at leaf index << level."""

    __tablename__ = "merkle_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class SignedCheckpoint(Base):
    """Every checkpoint the log has signed, one per sequenced batch."""

    __tablename__ = "checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IdempotentResponse(Base):
    """The first answer to a mutation with a request_id, returned again on retry."""

    __tablename__ = "idempotent_responses"

    caller_key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(128))
    # SHA-256 of the request without its request_id: a reused id with other content is refused.
    request_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    response: Mapped[bytes] = mapped_column(LargeBinary)
    entry_idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )


class Party(Base):
    """A registered contributor, lab or auditor."""

    __tablename__ = "parties"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[int] = mapped_column(SmallInteger)
    name: Mapped[str] = mapped_column(String(128))
    signing_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    encryption_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    registration_idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )


# --- items and their encrypted content --------------------------------------------------


class ItemRow(Base):
    """A registered data item (its commitment); content, if any, is in ``item_content``."""

    __tablename__ = "items"

    item_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    contributor_key_id: Mapped[str] = mapped_column(String(64), index=True)
    commitment: Mapped[bytes] = mapped_column(LargeBinary(32))
    size_bytes: Mapped[int] = mapped_column(BigInt)
    media_type: Mapped[str] = mapped_column(String(255))
    # coalition.v1.ItemState: REGISTERED, STORED or WITHDRAWN.
    state: Mapped[int] = mapped_column(SmallInteger)
    registration_idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )
    withdrawal_idx: Mapped[int | None] = mapped_column(BigInt, nullable=True)


class ItemTag(Base):
    """One tag of one item."""

    __tablename__ = "item_tags"

    item_id: Mapped[str] = mapped_column(String(32), ForeignKey("items.item_id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_item_tags_tag", "tag"),)


class KeyEncryptionKey(Base):
    """A contributor's key-encryption key (the key itself lives in the key provider)."""

    __tablename__ = "keks"

    kek_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_key_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Retired keys wrap nothing any more; they are destroyed after the retention window.
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ItemContent(Base):
    """An uploaded item's wrapped data key: deleting this row shreds the content."""

    __tablename__ = "item_content"

    item_id: Mapped[str] = mapped_column(String(32), ForeignKey("items.item_id"), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(64), ForeignKey("keks.kek_id"))
    wrapped_data_key: Mapped[bytes] = mapped_column(LargeBinary)
    segment_count: Mapped[int] = mapped_column(Integer)


class ItemSegment(Base):
    """One sealed segment of an item's content (AES-256-GCM STREAM segment)."""

    __tablename__ = "item_segments"

    item_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


# --- consent ------------------------------------------------------------------------------


class ConsentRow(Base):
    """A consent token; ``payload`` is the signed ConsentToken, parsed when terms are checked."""

    __tablename__ = "consents"

    consent_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    contributor_key_id: Mapped[str] = mapped_column(String(64), index=True)
    idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    # coalition.v1.ConsentState as recorded: GIVEN, WITHDRAWN or INVALIDATED (LAPSED is
    # derived from not_after at read time).
    state: Mapped[int] = mapped_column(SmallInteger)
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    withdrawal_idx: Mapped[int | None] = mapped_column(BigInt, nullable=True)
    # A member never uses a nonce twice (a replayed or cloned token is refused).
    nonce: Mapped[bytes] = mapped_column(LargeBinary(64))
    # Of a token naming items by id: how many of its distinct items its member has withdrawn
    # item by item, kept by the withdrawals while it is GIVEN (decision 41), so a withdrawal
    # reads one row per token instead of its named items.
    withdrawn_items: Mapped[int] = mapped_column(Integer, server_default="0")

    __table_args__ = (UniqueConstraint("contributor_key_id", "nonce"),)


class ConsentItem(Base):
    """Explicit item ids named by a consent token (tag and all-items selectors have none)."""

    __tablename__ = "consent_items"

    consent_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("consents.consent_id"), primary_key=True
    )
    item_id: Mapped[str] = mapped_column(String(32), primary_key=True)


# --- agreements, leases, releases, notices --------------------------------------------------


class AgreementRow(Base):
    """A signed agreement between one lab and the coalition."""

    __tablename__ = "agreements"

    agreement_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    lab_key_id: Mapped[str] = mapped_column(String(64), index=True)
    idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    expiry_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AgreementItem(Base):
    """An item an agreement covers."""

    __tablename__ = "agreement_items"

    agreement_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("agreements.agreement_id"), primary_key=True
    )
    item_id: Mapped[str] = mapped_column(String(32), primary_key=True)

    __table_args__ = (Index("ix_agreement_items_item", "item_id"),)


class LeaseRow(Base):
    """A lease taken by a lab on an agreement."""

    __tablename__ = "leases"

    lease_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    agreement_id: Mapped[str] = mapped_column(String(32), ForeignKey("agreements.agreement_id"))
    lab_key_id: Mapped[str] = mapped_column(String(64), index=True)
    idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )
    start_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expiry_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReleasedItem(Base):
    """An item whose data key was released in a KeyRelease entry."""

    __tablename__ = "released_items"

    release_idx: Mapped[int] = mapped_column(
        BigInt,
        ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED"),
        primary_key=True,
    )
    item_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    lab_key_id: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_released_items_item", "item_id", "lab_key_id"),)


class NoticeRow(Base):
    """A withdrawal notice to a lab, and the receipt that answered it."""

    __tablename__ = "notices"

    notice_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )
    lab_key_id: Mapped[str] = mapped_column(String(64))
    agreement_id: Mapped[str] = mapped_column(String(32))
    withdrawal_id: Mapped[str] = mapped_column(String(32))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    respond_by: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    receipt_idx: Mapped[int | None] = mapped_column(BigInt, nullable=True)

    __table_args__ = (Index("ix_notices_lab_idx", "lab_key_id", "idx"),)


# --- negotiations -----------------------------------------------------------------------


class NegotiationRow(Base):
    """A negotiation between one lab and the coalition (its moves are in the ledger)."""

    __tablename__ = "negotiations"

    negotiation_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    lab_key_id: Mapped[str] = mapped_column(String(64), index=True)
    idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )
    # coalition.v1.NegotiationState.
    state: Mapped[int] = mapped_column(SmallInteger)
    round: Mapped[int] = mapped_column(Integer)
    # Serialized LicenceTerms last proposed, and by whom.
    current_terms: Mapped[bytes] = mapped_column(LargeBinary)
    coalition_offered_last: Mapped[bool] = mapped_column()
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deadline: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    max_rounds: Mapped[int] = mapped_column(Integer)
    # When AGREED: the Agreement payload the lab must sign.
    agreement_draft: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    agreement_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    termination_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # While RATIFYING: the lab's DSSE signature over the draft (keyid, sig), kept until the
    # agreement is logged countersigned, and when the ballots close.
    lab_signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ratification_closes_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )

    __table_args__ = (Index("ix_negotiations_state_deadline", "state", "deadline"),)


class BallotRow(Base):
    """A covered member's vote on a negotiation being ratified."""

    __tablename__ = "ballots"

    negotiation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("negotiations.negotiation_id"), primary_key=True
    )
    member_key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    approve: Mapped[bool] = mapped_column()
    item_count: Mapped[int] = mapped_column(Integer)
    idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )
    # The ballot's reasons (norm ids, kebab-case), space-separated in ascending order: the
    # result's tally by reason is drawn from these.
    reasons: Mapped[str] = mapped_column(Text, server_default="")


class PayoutLineRow(Base):
    """A member's line in a payout statement (the statement itself is in the ledger)."""

    __tablename__ = "payout_lines"

    agreement_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    line_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    member_key_id: Mapped[str] = mapped_column(String(64), index=True)
    statement_idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )


# --- strikes ------------------------------------------------------------------------------


class PledgeRow(Base):
    """A member's strike pledge."""

    __tablename__ = "pledges"

    pledge_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    member_key_id: Mapped[str] = mapped_column(String(64), index=True)
    # The lab struck against; "" for every lab.
    target: Mapped[str] = mapped_column(String(64))
    min_members: Mapped[int] = mapped_column(Integer)
    min_share_bp: Mapped[int] = mapped_column(Integer)
    expiry_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # coalition.v1.PledgeState as recorded (EXPIRED is derived from expiry_time).
    state: Mapped[int] = mapped_column(SmallInteger)
    idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED")
    )
    payload: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_pledges_target_state", "target", "state"),)


class ConsentExclusion(Base):
    """A lab a member's consent no longer covers, from an executed strike pledge."""

    __tablename__ = "consent_exclusions"

    member_key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lab_key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idx: Mapped[int] = mapped_column(BigInt)


# --- disputes -----------------------------------------------------------------------------


class DisputeRow(Base):
    """A covered member's dispute about an agreement, and its lab's response."""

    __tablename__ = "disputes"

    dispute_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    agreement_id: Mapped[str] = mapped_column(String(32), ForeignKey("agreements.agreement_id"))
    lab_key_id: Mapped[str] = mapped_column(String(64))
    member_key_id: Mapped[str] = mapped_column(String(64))
    # Unique: one statement per ledger index; it also orders the unfiltered listing.
    idx: Mapped[int] = mapped_column(
        BigInt, ForeignKey("log_entries.idx", deferrable=True, initially="DEFERRED"), unique=True
    )
    filed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The signed Dispute, a serialised coalition.v1.Envelope, served verbatim.
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    # Set when the lab answers (once), with its signed DisputeResponse envelope.
    response_idx: Mapped[int | None] = mapped_column(BigInt, nullable=True)
    responded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    response_envelope: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

    __table_args__ = (
        Index("ix_disputes_agreement_idx", "agreement_id", "idx"),
        Index("ix_disputes_lab_idx", "lab_key_id", "idx"),
        Index("ix_disputes_member_idx", "member_key_id", "idx"),
    )
