"""receiver processes (dicomnode.receive.receivers): the series that open intake sessions carry,
shared between processes in `open_intake`, and the receiver process of each association.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 15:20:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'open_intake',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('session_key', sa.String(length=96), nullable=False),
        sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_open_intake_session_series', 'open_intake', ['session_key', 'series_instance_uid'], unique=True)
    op.create_index(op.f('ix_open_intake_series_instance_uid'), 'open_intake', ['series_instance_uid'], unique=False)
    op.create_index(op.f('ix_open_intake_pid'), 'open_intake', ['pid'], unique=False)
    # a plain nullable ADD COLUMN: no table rebuild on SQLite
    op.add_column('associations', sa.Column('receiver_pid', sa.Integer(), nullable=True))
    op.create_index(op.f('ix_associations_receiver_pid'), 'associations', ['receiver_pid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_associations_receiver_pid'), table_name='associations')
    op.drop_column('associations', 'receiver_pid')
    op.drop_index(op.f('ix_open_intake_pid'), table_name='open_intake')
    op.drop_index(op.f('ix_open_intake_series_instance_uid'), table_name='open_intake')
    op.drop_index('ix_open_intake_session_series', table_name='open_intake')
    op.drop_table('open_intake')
