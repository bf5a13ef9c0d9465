import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, Enum, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base

JsonDocument = dict[str, object]


class TaskState(StrEnum):
    QUEUED = "QUEUED"
    STARTED = "STARTED"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


FINISHED_STATES = (TaskState.SUCCEEDED, TaskState.FAILED)


class TaskRun(Base):
    """One run of one task: the outbox row the API writes, and the record the worker keeps."""

    __tablename__ = "task_runs"
    __table_args__ = (
        CheckConstraint(
            "state IN ('QUEUED', 'STARTED', 'RETRYING', 'SUCCEEDED', 'FAILED')", name="state"
        ),
        # The relay: unpublished rows, oldest first.
        Index(
            "ix_task_runs_unpublished", "created_at", postgresql_where=text("published_at IS NULL")
        ),
        # The relay's repair: published but not started, and started but never finished.
        Index(
            "ix_task_runs_waiting",
            "published_at",
            postgresql_where=text("state IN ('QUEUED', 'RETRYING') AND published_at IS NOT NULL"),
        ),
        Index("ix_task_runs_running", "started_at", postgresql_where=text("state = 'STARTED'")),
        # prune_logs: finished before a date.
        Index(
            "ix_task_runs_finished", "finished_at", postgresql_where=text("finished_at IS NOT NULL")
        ),
        # GET /tasks, newest first.
        Index("ix_task_runs_created", "created_at", "id"),
        Index(
            "uq_task_runs_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kwargs: Mapped[JsonDocument] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    state: Mapped[TaskState] = mapped_column(
        Enum(TaskState, native_enum=False, length=16), server_default=text("'QUEUED'")
    )
    result: Mapped[object | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    request_id: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    published_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
