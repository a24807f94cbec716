"""findings.cyst: an air-filled lumen in the lesion (inference.characterize.cyst)

thin_walled | thick_walled | multilocular | thin_walled_in_part (a cyst, graded by the Lung-RADS v2022 cyst rules) |
with_opacity (a cyst whose opacity is graded as a nodule too) | cavity (a nodule's, graded by size). Nullable: NULL is none, and rows recorded before this revision were not
looked at for one.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 16:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0017'
down_revision: Union[str, Sequence[str], None] = '0016'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cyst', sa.String(24), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.drop_column('cyst')
