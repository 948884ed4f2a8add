"""consents.withdrawn_items: a token's withdrawn items, counted as withdrawals happen

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 13:30:00

Existing tokens get their count from the items they name (the query withdrawals ran on every
batch before this column, decision 41).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ITEM_STATE_WITHDRAWN = 3  # coalition.v1.ItemState.ITEM_STATE_WITHDRAWN


def upgrade() -> None:
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("withdrawn_items", sa.Integer(), server_default="0", nullable=False)
        )
    op.execute(
        sa.text(
            "UPDATE consents SET withdrawn_items = ("
            " SELECT count(*) FROM consent_items JOIN items"
            " ON items.item_id = consent_items.item_id"
            " WHERE consent_items.consent_id = consents.consent_id"
            " AND items.state = :withdrawn"
            " AND items.contributor_key_id = consents.contributor_key_id)"
        ).bindparams(withdrawn=ITEM_STATE_WITHDRAWN)
    )


def downgrade() -> None:
    # Not a batch operation: on SQLite that copies the table, and dropping the old copy
    # breaks consent_items' foreign key. Both databases drop a column in place (SQLite
    # since 3.35).
    op.execute("ALTER TABLE consents DROP COLUMN withdrawn_items")
