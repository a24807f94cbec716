"""findings: the nodule's TID 1500 tracking UID and its comparison with the prior exam (issue 12)

All nullable: rows recorded before this revision, and findings of exams compared with no prior, have none.
`comparison_status` is new | growing | stable | shrinking; `prior_finding_id` the matched finding of the
prior exam's job (its `tracking_uid` is reused, so a nodule keeps its identity across exams).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 18:20:00

"""
from typing import Any, Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0014'
down_revision: Union[str, Sequence[str], None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS: list[tuple[str, sa.types.TypeEngine[Any]]] = [
    ('tracking_uid', sa.String(64)),
    ('comparison_status', sa.String(16)),
    ('prior_finding_id', sa.Integer()),
    ('prior_mean_diameter_mm', sa.Float()),
    ('prior_volume_mm3', sa.Float()),
    ('interval_days', sa.Integer()),
    ('volume_change_pct', sa.Float()),
    ('doubling_time_days', sa.Float()),
    ('diameter_change_mm', sa.Float()),
    ('lung_rads_growth', sa.Boolean()),
]


def upgrade() -> None:
    with op.batch_alter_table('findings', schema=None) as batch_op:
        for name, kind in COLUMNS:
            batch_op.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('findings', schema=None) as batch_op:
        for name, _kind in reversed(COLUMNS):
            batch_op.drop_column(name)
