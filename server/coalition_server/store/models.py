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
