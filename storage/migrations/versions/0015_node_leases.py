"""several nodes on one database (issue 14): the `nodes` table (identity and heartbeat), and the
lease of a claimed job or delivery (`claimed_by`, `lease_expires_at`); `open_intake.node_id`, so a
node's start-up ends only its own sessions.

All new columns are nullable plain ADD COLUMNs (no table rebuild on SQLite); rows from before this
revision have no owner, which start-up treats as the node's own (there was one node then).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 18:40:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0015'
down_revision: Union[str, Sequence[str], None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LEASED = ('jobs', 'deliveries')


def upgrade() -> None:
    op.create_table(
        'nodes',
        sa.Column('node_id', sa.String(length=64), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('engine', sa.String(length=32), nullable=False),
        sa.Column('ae_title', sa.String(length=16), nullable=False),
        sa.Column('port', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_heartbeat', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('node_id'),
    )
    for table in LEASED:
        op.add_column(table, sa.Column('claimed_by', sa.String(length=64), nullable=True))
        op.add_column(table, sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        op.create_index(op.f(f'ix_{table}_claimed_by'), table, ['claimed_by'], unique=False)
        op.create_index(f'ix_{table}_lease', table, ['state', 'lease_expires_at'], unique=False)
    op.add_column('open_intake', sa.Column('node_id', sa.String(length=64), nullable=True))
    op.create_index(op.f('ix_open_intake_node_id'), 'open_intake', ['node_id'], unique=False)


def downgrade() -> None:
    # plain DROP COLUMNs (SQLite >= 3.35), indexes first: a batch rebuild of jobs would trip the
    # foreign keys that point at it
    op.drop_index(op.f('ix_open_intake_node_id'), table_name='open_intake')
    op.drop_column('open_intake', 'node_id')
    for table in reversed(LEASED):
        op.drop_index(f'ix_{table}_lease', table_name=table)
        op.drop_index(op.f(f'ix_{table}_claimed_by'), table_name=table)
        op.drop_column(table, 'lease_expires_at')
        op.drop_column(table, 'claimed_by')
    op.drop_table('nodes')
