"""Baseline: bulk insert of the rows ingest writes, through SQLAlchemy, on the same database.

Per consent token, ingest durably writes one ``log_entries`` row (the leaf bytes), one
``entry_subjects`` row, about two ``merkle_nodes`` rows (the leaf and the perfect subtrees it
completes), one ``consents`` row and one ``consent_items`` row. This inserts exactly those
rows, with the sizes of a real signed one-item token, into the project's own schema (migrated
as the server migrates it, with the server's engine settings: WAL and synchronous=FULL on
SQLite), 1000 tokens per transaction, with no verification, no Merkle hashing and no gRPC.
It is what the database alone allows ingest.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from bench.harness import Benchmark, Context, DbKind, Figure, Stopwatch, scratch_database
from coalition import statements
from coalition.client import consent_token, price_floor
from coalition.keys import SigningKey
from coalition.v1 import consent_pb2
from coalition_server.store import migrate, models
from coalition_server.store.database import Database

NAME = "sql-insert"
BATCH = 1000


def _rows(start: int, count: int, signer: str, leaf_bytes: int, payload_bytes: int) -> Any:
    """The rows of ``count`` tokens at ledger indices start, start+1, ..."""
    now = datetime.now(UTC)
    entries, subjects, nodes, consents, consent_items = [], [], [], [], []
    for index in range(start, start + count):
        leaf = os.urandom(leaf_bytes)
        consent_id = os.urandom(16).hex()
        entries.append(
            {
                "idx": index,
                "leaf_hash": hashlib.sha256(b"\0" + leaf).digest(),
                "leaf": leaf,
                "statement_hash": os.urandom(32),
                "kind": "ConsentToken",
                "signer_key_id": signer,
                "integrated_time": now,
            }
        )
        subjects.append({"subject": signer, "idx": index})
        # The leaf, and each perfect subtree it completes (level L when index+1 is a
        # multiple of 2**L): about two nodes per leaf, as the sequencer stores them.
        level = 0
        while level == 0 or (index + 1) % (1 << level) == 0:
            nodes.append({"level": level, "idx": index >> level, "hash": os.urandom(32)})
            level += 1
        consents.append(
            {
                "consent_id": consent_id,
                "contributor_key_id": signer,
                "idx": index,
                "payload": os.urandom(payload_bytes),
                "state": consent_pb2.CONSENT_STATE_GIVEN,
                "not_before": now,
                "not_after": now + timedelta(days=365),
                "nonce": os.urandom(16),
            }
        )
        consent_items.append({"consent_id": consent_id, "item_id": os.urandom(16).hex()})
    return entries, subjects, nodes, consents, consent_items


async def measure(ctx: Context, db: DbKind | None) -> list[Figure]:
    """Insert ``count`` tokens' rows, BATCH per transaction, and time the inserts."""
    assert db is not None
    count = ctx.pick(3_000, 50_000)
    key = SigningKey.generate()
    token = consent_token(
        item_ids=["0" * 32], purposes=["train-ai"], floors=[price_floor("purchase", 1_000_000)]
    )
    envelope = statements.sign_statement(token, key).to_proto()
    leaf_bytes = len(envelope.SerializeToString()) + 8  # + the LedgerLeaf's integrated_time
    payload_bytes = len(token.SerializeToString())
    batches = [
        _rows(start, min(BATCH, count - start), key.key_id, leaf_bytes, payload_bytes)
        for start in range(0, count, BATCH)
    ]
    tables = (
        models.LogEntry,
        models.EntrySubject,
        models.MerkleNode,
        models.ConsentRow,
        models.ConsentItem,
    )
    async with scratch_database(ctx, db, "sql-insert") as url:
        database = Database.connect(url)
        try:
            await migrate.upgrade(database)
            with Stopwatch() as watch:
                for rows in batches:
                    async with database.writer.begin() as conn:
                        for table, table_rows in zip(tables, rows, strict=True):
                            await conn.execute(insert(table), table_rows)
        finally:
            await database.dispose()
    return [
        Figure(
            NAME,
            "SQL bulk insert of ingest's rows",
            count / watch.seconds,
            "tokens/s",
            db=db,
            details={"tokens": count, "per_transaction": BATCH, "seconds": round(watch.seconds, 3)},
        )
    ]


BENCHMARK = Benchmark(NAME, "baseline", per_db=True, run=measure)
