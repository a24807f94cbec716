"""series.open_associations: dropped, it was never written

The completion tracker keeps the open associations of a series in memory (they end with the
process anyway); the column stayed 0 in every row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:05:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # batch mode: SQLite cannot drop a column in place on every version the node supports
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_column('open_associations')


def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('open_associations', sa.Integer(), nullable=False, server_default='0'))
