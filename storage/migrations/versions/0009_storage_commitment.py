"""storage commitment of deliveries: the Transaction UID a delivery was last asked in, when, and
when the destination confirmed it (dicomnode.deliver.commitment). Rows from before stay NULL.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 15:30:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # plain nullable ADD COLUMNs: no table rebuild on SQLite (deliveries is referenced by nothing,
    # but it can be large)
    op.add_column('deliveries', sa.Column('commit_transaction_uid', sa.String(length=64), nullable=True))
    op.add_column('deliveries', sa.Column('commit_requested_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('deliveries', sa.Column('committed_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f('ix_deliveries_commit_transaction_uid'), 'deliveries', ['commit_transaction_uid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_deliveries_commit_transaction_uid'), table_name='deliveries')
    op.drop_column('deliveries', 'committed_at')
    op.drop_column('deliveries', 'commit_requested_at')
    op.drop_column('deliveries', 'commit_transaction_uid')
