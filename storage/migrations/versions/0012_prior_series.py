"""priors for follow-up comparison (dicomnode.priors, issue 12): the role of a series ("prior": retrieved
only to compare with, it starts no job of its own and is never delivered), the patient identity a prior
must match (IssuerOfPatientID, PatientBirthDate), and one row per prior retrieval (what was asked of
which peer, how, and how it ended). Rows from before stay NULL: a series without a role is an exam.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 16:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0012'
down_revision: Union[str, Sequence[str], None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # plain ADD COLUMNs (nullable, no default): no table rebuild on SQLite
    op.add_column('series', sa.Column('role', sa.String(length=16), nullable=True))
    op.add_column('studies', sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=True))
    op.add_column('studies', sa.Column('patient_birth_date', sa.String(length=8), nullable=True))
    op.create_table(
        'prior_retrievals',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('current_series_id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('peer', sa.String(length=16), nullable=False),
        sa.Column('method', sa.String(length=8), nullable=False),
        sa.Column('message_id', sa.Integer(), nullable=True),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('instances', sa.Integer(), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['current_series_id'], ['series.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_prior_retrievals_series_instance_uid', 'prior_retrievals', ['series_instance_uid'])
    op.create_index('ix_prior_retrievals_current_series_id', 'prior_retrievals', ['current_series_id'])


def downgrade() -> None:
    op.drop_index('ix_prior_retrievals_current_series_id', table_name='prior_retrievals')
    op.drop_index('ix_prior_retrievals_series_instance_uid', table_name='prior_retrievals')
    op.drop_table('prior_retrievals')
    # ALTER TABLE DROP COLUMN in place, as 0008: a batch rebuild of `series` would drop a referenced table
    op.drop_column('studies', 'patient_birth_date')
    op.drop_column('studies', 'issuer_of_patient_id')
    op.drop_column('series', 'role')
