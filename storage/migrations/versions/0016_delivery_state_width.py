"""deliveries.state: VARCHAR(32), not 16

'awaiting_commitment' (storage commitment, revision 0009) is 19 characters: SQLite never enforced the
width, PostgreSQL refuses the row ("value too long for type character varying(16)"), so storage
commitment failed on a PostgreSQL audit database.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 19:10:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0016'
down_revision: Union[str, Sequence[str], None] = '0015'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.alter_column('state', existing_type=sa.String(16), type_=sa.String(32), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.alter_column('state', existing_type=sa.String(32), type_=sa.String(16), existing_nullable=False)
