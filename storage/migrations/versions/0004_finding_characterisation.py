"""findings: issue 11 characterisation (type, calcification, margin, location, axes, solid component,
Brock risk, Lung-RADS reasons, note); `malignancy` renamed `model_score`, values kept

The new columns are nullable: rows recorded before this revision did not measure them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 10:50:00

"""
from typing import Any, Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NEW_COLUMNS: list[tuple[str, sa.types.TypeEngine[Any]]] = [
    ('nodule_type', sa.String(length=16)),
    ('calcified', sa.Boolean()),
    ('calcification_pattern', sa.String(length=16)),
    ('margin', sa.String(length=16)),
    ('lung', sa.String(length=8)),
    ('zone', sa.String(length=8)),
    ('juxtapleural', sa.Boolean()),
    ('mean_diameter_mm', sa.Float()),
    ('long_axis_mm', sa.Float()),
    ('short_axis_mm', sa.Float()),
    ('solid_component_mm', sa.Float()),
    ('brock_risk', sa.Float()),
    ('lung_rads_reasons', sa.Text()),
    ('note', sa.Text()),
]


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table (copying the rows) to rename a column
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.alter_column('malignancy', new_column_name='model_score', existing_type=sa.Float(),
                              existing_nullable=False)
        for name, type_ in NEW_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('findings', schema=None) as batch_op:
        for name, _ in reversed(NEW_COLUMNS):
            batch_op.drop_column(name)
        batch_op.alter_column('model_score', new_column_name='malignancy', existing_type=sa.Float(),
                              existing_nullable=False)
