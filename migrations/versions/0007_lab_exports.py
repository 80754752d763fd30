"""lab exports (take-away bundles)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lab_exports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lab_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('job_id', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('size', sa.Integer(), nullable=True),
    sa.Column('archive', sa.LargeBinary(), nullable=True),
    sa.Column('message', sa.String(length=500), nullable=False),
    sa.ForeignKeyConstraint(['lab_id'], ['labs.id'], name=op.f('fk_lab_exports_lab_id_labs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lab_exports'))
    )
    with op.batch_alter_table('lab_exports', schema=None) as batch_op:
        batch_op.create_index('ix_lab_exports_lab_id_created_at', ['lab_id', 'created_at'], unique=False)
        batch_op.create_index('uq_lab_exports_pending', ['lab_id'], unique=True, postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))


def downgrade() -> None:
    with op.batch_alter_table('lab_exports', schema=None) as batch_op:
        batch_op.drop_index('uq_lab_exports_pending', postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))
        batch_op.drop_index('ix_lab_exports_lab_id_created_at')

    op.drop_table('lab_exports')
