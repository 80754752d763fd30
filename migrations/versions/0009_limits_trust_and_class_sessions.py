"""per-learner weekly limits, trust levels, class sessions that pre-warm labs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 08:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('class_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('activity_id', sa.Integer(), nullable=False),
    sa.Column('starts_at', sa.DateTime(), nullable=False),
    sa.Column('duration_minutes', sa.Integer(), nullable=False),
    sa.Column('lead_minutes', sa.Integer(), nullable=False),
    sa.Column('warm_pool', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('warmed_at', sa.DateTime(), nullable=True),
    sa.Column('warmed_count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['activity_id'], ['activities.id'], name=op.f('fk_class_sessions_activity_id_activities')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_class_sessions'))
    )
    with op.batch_alter_table('class_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_class_sessions_starts_at', ['starts_at'], unique=False)
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('weekly_hours_limit', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('min_trust_level', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('labs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prewarmed_by', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_labs_prewarmed_by_class_sessions'), 'class_sessions', ['prewarmed_by'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('labs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_labs_prewarmed_by_class_sessions'), type_='foreignkey')
        batch_op.drop_column('prewarmed_by')
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_column('min_trust_level')
        batch_op.drop_column('weekly_hours_limit')
    with op.batch_alter_table('class_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_class_sessions_starts_at')
    op.drop_table('class_sessions')
