"""users and task runs

Revision ID: 0001
Revises:
Create Date: 2026-11-24 05:16:41.464528
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "kwargs",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "state",
            sa.Enum(
                "QUEUED",
                "STARTED",
                "RETRYING",
                "SUCCEEDED",
                "FAILED",
                name="taskstate",
                native_enum=False,
                length=16,
            ),
            server_default=sa.text("'QUEUED'"),
            nullable=False,
        ),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('QUEUED', 'STARTED', 'RETRYING', 'SUCCEEDED', 'FAILED')",
            name=op.f("ck_task_runs_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_runs")),
    )
    op.create_index("ix_task_runs_created", "task_runs", ["created_at", "id"], unique=False)
    op.create_index(
        "ix_task_runs_finished",
        "task_runs",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.create_index(
        "ix_task_runs_running",
        "task_runs",
        ["started_at"],
        unique=False,
        postgresql_where=sa.text("state = 'STARTED'"),
    )
    op.create_index(
        "ix_task_runs_unpublished",
        "task_runs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index(
        "ix_task_runs_waiting",
        "task_runs",
        ["published_at"],
        unique=False,
        postgresql_where=sa.text("state IN ('QUEUED', 'RETRYING') AND published_at IS NOT NULL"),
    )
    op.create_index(
        "uq_task_runs_idempotency_key",
        "task_runs",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("full_name", sa.String(length=200), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("welcome_email_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deactivated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index(
        "uq_users_email_lower", "users", [sa.literal_column("lower(email)")], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_users_email_lower", table_name="users")
    op.drop_table("users")
    op.drop_index(
        "uq_task_runs_idempotency_key",
        table_name="task_runs",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index(
        "ix_task_runs_waiting",
        table_name="task_runs",
        postgresql_where=sa.text("state IN ('QUEUED', 'RETRYING') AND published_at IS NOT NULL"),
    )
    op.drop_index(
        "ix_task_runs_unpublished",
        table_name="task_runs",
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.drop_index(
        "ix_task_runs_running",
        table_name="task_runs",
        postgresql_where=sa.text("state = 'STARTED'"),
    )
    op.drop_index(
        "ix_task_runs_finished",
        table_name="task_runs",
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.drop_index("ix_task_runs_created", table_name="task_runs")
    op.drop_table("task_runs")
