"""retention: series.files_deleted_at / results_deleted_at, instances.deleted_at, and the
retention_purges journal (what the policy decided to remove, finished after a crash)

Columns only added, all nullable: rows recorded before this revision have all their files.

Revision ID: 0005_retention
Revises: 0004
Create Date: 2026-11-30 12:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005_retention'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('files_deleted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('results_deleted_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('retention_purges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('what', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('file_count', sa.Integer(), nullable=False),
    sa.Column('files', sa.JSON(), nullable=True),
    sa.Column('marked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('retention_purges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retention_purges_series_id'), ['series_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_retention_purges_finished_at'), ['finished_at'], unique=False)


def downgrade() -> None:
    """Drops the journal and the marks; the files already removed stay removed."""
    with op.batch_alter_table('retention_purges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retention_purges_finished_at'))
        batch_op.drop_index(batch_op.f('ix_retention_purges_series_id'))
    op.drop_table('retention_purges')
    # ALTER TABLE DROP COLUMN in place (SQLite >= 3.35): a batch rebuild of `series` would drop the
    # table that jobs and findings reference, which foreign_keys=ON refuses once rows exist
    op.drop_column('instances', 'deleted_at')
    op.drop_column('series', 'results_deleted_at')
    op.drop_column('series', 'files_deleted_at')
