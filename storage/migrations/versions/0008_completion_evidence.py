"""completion on evidence: per-instance geometry facts captured at ingest, and the series' evidence
due time (dicomnode.receive.geometry, dicomnode.receive.lifecycle). Rows from before stay NULL and
their series complete on the idle timer, as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 13:30:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # plain ADD COLUMNs (nullable, no default): no table rebuild on SQLite, instant on large tables
    op.add_column('instances', sa.Column('slice_position_mm', sa.Float(), nullable=True))
    op.add_column('instances', sa.Column('orientation', sa.String(length=96), nullable=True))
    op.add_column('instances', sa.Column('images_in_acquisition', sa.Integer(), nullable=True))
    op.add_column('instances', sa.Column('number_of_frames', sa.Integer(), nullable=True))
    op.add_column('series', sa.Column('evidence_due_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN in place (SQLite >= 3.35), as 0005: a batch rebuild of `series` would
    # drop the table that jobs and findings reference, which foreign_keys=ON refuses once rows exist
    op.drop_column('series', 'evidence_due_at')
    op.drop_column('instances', 'number_of_frames')
    op.drop_column('instances', 'images_in_acquisition')
    op.drop_column('instances', 'orientation')
    op.drop_column('instances', 'slice_position_mm')
