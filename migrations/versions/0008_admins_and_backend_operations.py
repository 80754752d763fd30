"""admins, audit targets, backend capacity/drain/prices

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 06:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('admins',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=255), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('issuer', sa.String(length=255), nullable=True),
    sa.Column('subject', sa.String(length=255), nullable=True),
    sa.Column('email', sa.String(length=255), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_sign_in_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admins')),
    sa.UniqueConstraint('issuer', 'subject', name=op.f('uq_admins_issuer')),
    sa.UniqueConstraint('username', name=op.f('uq_admins_username'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target', sa.String(length=255), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('address', sa.String(length=64), nullable=False, server_default=''))
        batch_op.create_index('ix_audit_events_at', ['at'], unique=False)
    with op.batch_alter_table('backends', schema=None) as batch_op:
        batch_op.add_column(sa.Column('capacity', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('draining', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('hourly_price', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('suspended_hourly_price', sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('backends', schema=None) as batch_op:
        batch_op.drop_column('suspended_hourly_price')
        batch_op.drop_column('hourly_price')
        batch_op.drop_column('draining')
        batch_op.drop_column('capacity')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_at')
        batch_op.drop_column('address')
        batch_op.drop_column('target')
    op.drop_table('admins')
