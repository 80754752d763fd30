"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 22:23:17.026557
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('backends',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('secrets', sa.LargeBinary(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_backends')),
    sa.UniqueConstraint('name', name=op.f('uq_backends_name'))
    )
    op.create_table('courses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issuer', sa.String(length=255), nullable=False),
    sa.Column('context_id', sa.String(length=255), nullable=False),
    sa.Column('title', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_courses')),
    sa.UniqueConstraint('issuer', 'context_id', name=op.f('uq_courses_issuer'))
    )
    op.create_table('images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=255), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('protocol', sa.String(length=16), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images')),
    sa.UniqueConstraint('slug', 'version', name=op.f('uq_images_slug'))
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issuer', sa.String(length=255), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('email', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('issuer', 'subject', name=op.f('uq_users_issuer'))
    )
    op.create_table('activities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('course_id', sa.Integer(), nullable=False),
    sa.Column('resource_link_id', sa.String(length=255), nullable=False),
    sa.Column('title', sa.String(length=255), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('backend_id', sa.Integer(), nullable=False),
    sa.Column('idle_suspend_after', sa.Integer(), nullable=False),
    sa.Column('keepalive_interval', sa.Integer(), nullable=False),
    sa.Column('reap_after_days', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['backend_id'], ['backends.id'], name=op.f('fk_activities_backend_id_backends')),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_activities_course_id_courses')),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_activities_image_id_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activities')),
    sa.UniqueConstraint('course_id', 'resource_link_id', name=op.f('uq_activities_course_id'))
    )
    op.create_table('labs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('activity_id', sa.Integer(), nullable=False),
    sa.Column('backend_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('handle', sa.JSON(), nullable=True),
    sa.Column('progress', sa.Integer(), nullable=False),
    sa.Column('message', sa.String(length=500), nullable=False),
    sa.Column('deadline', sa.DateTime(), nullable=True),
    sa.Column('backend_call', sa.String(length=16), nullable=True),
    sa.Column('recoveries', sa.Integer(), nullable=False),
    sa.Column('gone_since', sa.DateTime(), nullable=True),
    sa.Column('last_active_at', sa.DateTime(), nullable=False),
    sa.Column('idle_deadline', sa.DateTime(), nullable=True),
    sa.Column('state_changed_at', sa.DateTime(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['activity_id'], ['activities.id'], name=op.f('fk_labs_activity_id_activities')),
    sa.ForeignKeyConstraint(['backend_id'], ['backends.id'], name=op.f('fk_labs_backend_id_backends')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_labs_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labs'))
    )
    with op.batch_alter_table('labs', schema=None) as batch_op:
        batch_op.create_index('ix_labs_state_deadline', ['state', 'deadline'], unique=False)
        batch_op.create_index('ix_labs_state_idle_deadline', ['state', 'idle_deadline'], unique=False)
        batch_op.create_index('ix_labs_state_last_active_at', ['state', 'last_active_at'], unique=False)
        batch_op.create_index('uq_labs_live', ['user_id', 'activity_id'], unique=True, postgresql_where=sa.text("state NOT IN ('failed', 'deleting', 'deleted')"), sqlite_where=sa.text("state NOT IN ('failed', 'deleting', 'deleted')"))

    op.create_table('lab_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lab_id', sa.Integer(), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=False),
    sa.Column('to_state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('job_id', sa.String(length=255), nullable=True),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['lab_id'], ['labs.id'], name=op.f('fk_lab_events_lab_id_labs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lab_events'))
    )
    with op.batch_alter_table('lab_events', schema=None) as batch_op:
        batch_op.create_index('ix_lab_events_lab_id_at', ['lab_id', 'at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('lab_events', schema=None) as batch_op:
        batch_op.drop_index('ix_lab_events_lab_id_at')

    op.drop_table('lab_events')
    with op.batch_alter_table('labs', schema=None) as batch_op:
        batch_op.drop_index('uq_labs_live', postgresql_where=sa.text("state NOT IN ('failed', 'deleting', 'deleted')"), sqlite_where=sa.text("state NOT IN ('failed', 'deleting', 'deleted')"))
        batch_op.drop_index('ix_labs_state_last_active_at')
        batch_op.drop_index('ix_labs_state_idle_deadline')
        batch_op.drop_index('ix_labs_state_deadline')

    op.drop_table('labs')
    op.drop_table('activities')
    op.drop_table('users')
    op.drop_table('images')
    op.drop_table('courses')
    op.drop_table('backends')
