"""pixel data location and bits allocated of each stored instance

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 11:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pixel_data_offset", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("pixel_data_length", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("bits_allocated", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("bits_allocated")
        batch_op.drop_column("pixel_data_length")
        batch_op.drop_column("pixel_data_offset")
