"""ATNA export cursor: the last audit event the exporter handed to the hospital's audit repository
(dicomnode.atna). The events after it are the persistent queue. And the settings snapshot (a digest
per key) against which a start audits changed settings and console users.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 15:30:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'atna_export',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('last_event_id', sa.Integer(), nullable=False),
        sa.Column('messages_sent', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'settings_snapshots',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('digests', sa.JSON(), nullable=False),
        sa.Column('taken_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('settings_snapshots')
    op.drop_table('atna_export')
