"""indexes on events.job_id and events.delivery_id: a series' page reads every event of its jobs and
deliveries (the sender records those with a job or delivery id and no series UID), which scanned the
whole events table without them

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 13:20:00

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_delivery_id'), ['delivery_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_delivery_id'))
        batch_op.drop_index(batch_op.f('ix_events_job_id'))
