"""findings.airway: the airway whose lumen the lesion lies in (inference.characterize.airway)

segmental_or_proximal | subsegmental (by the lumen's calibre), graded by the Lung-RADS v2022 airway rules. Nullable:
NULL is a nodule in the lung, and rows recorded before this revision were not looked at for one.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 19:10:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0018'
down_revision: Union[str, Sequence[str], None] = '0017'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('airway', sa.String(24), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.drop_column('airway')
