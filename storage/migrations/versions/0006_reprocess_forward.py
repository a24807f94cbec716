"""jobs.supersedes_job_id (re-runs of a series), deliveries.kind and deliveries.series_id (forwarding
the source instances themselves through the outbox)

Existing deliveries are results (kind 'result'); their series_id is filled in from their job, so
every delivery row names its series (retention reads the delivery states per series).

Revision ID: 0006
Revises: 0005_retention
Create Date: 2026-11-30 12:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005_retention'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # jobs is referenced by findings and deliveries: a batch rebuild (DROP TABLE jobs) would break
    # their foreign keys, so a plain ADD COLUMN, without a constraint (the model has none either)
    op.add_column('jobs', sa.Column('supersedes_job_id', sa.Integer(), nullable=True))
    op.create_index('ix_jobs_supersedes_job_id', 'jobs', ['supersedes_job_id'], unique=False)
    # deliveries is referenced by nothing: batch mode rebuilds it (copying the rows) with the foreign key
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='result'))
        batch_op.add_column(sa.Column('series_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_deliveries_kind', ['kind'], unique=False)
        batch_op.create_index('ix_deliveries_series_id', ['series_id'], unique=False)
        batch_op.create_foreign_key('fk_deliveries_series_id', 'series', ['series_id'], ['id'])
    op.execute("UPDATE deliveries SET series_id = (SELECT jobs.series_id FROM jobs WHERE jobs.id = deliveries.job_id) "
               "WHERE series_id IS NULL AND job_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_constraint('fk_deliveries_series_id', type_='foreignkey')
        batch_op.drop_index('ix_deliveries_series_id')
        batch_op.drop_index('ix_deliveries_kind')
        batch_op.drop_column('series_id')
        batch_op.drop_column('kind')
    op.drop_index('ix_jobs_supersedes_job_id', table_name='jobs')
    op.drop_column('jobs', 'supersedes_job_id')  # SQLite >= 3.35 drops a column in place
