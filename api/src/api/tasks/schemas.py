from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from api.text import Printable, Trimmed
from shared.contracts import PRUNE_LOGS, PruneLogsArgs
from shared.models import TaskState

TaskName = Annotated[str, StringConstraints(min_length=1, max_length=200), Trimmed, Printable]


class TaskEnqueueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TaskName = Field(description="A task name: GET /task-types lists them")
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="The task's arguments, as its `args_schema` in GET /task-types describes",
    )


# The example the OpenAPI page offers: accepted as it stands, and harmless to run (it prunes
# finished runs older than a hundred years, the longest retention the task takes).
SAFE_EXAMPLE = TaskEnqueueIn(
    name=PRUNE_LOGS.name, kwargs=PruneLogsArgs(days=36_500).model_dump(mode="json")
)


class TaskTypeOut(BaseModel):
    """A task `POST /tasks` accepts."""

    name: str
    queue: str = Field(description="The broker queue its runs go to")
    description: str
    args_schema: dict[str, JsonValue] = Field(description="JSON schema of `kwargs`")
    result_schema: dict[str, JsonValue] = Field(description="JSON schema of a run's `result`")


class TaskAcceptedOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    state: TaskState


class TaskRunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, extra="forbid")

    id: uuid.UUID
    name: str
    kwargs: dict[str, JsonValue]
    state: TaskState
    result: JsonValue
    error: str | None
    attempts: int
    request_id: str | None
    created_at: datetime
    published_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class TaskRunPage(BaseModel):
    items: list[TaskRunOut]
    next_cursor: str | None


class ScheduleOut(BaseModel):
    name: str = Field(description="The beat entry")
    task: str
    schedule: str = Field(
        description="A crontab expression (UTC; when both day fields are restricted, a day "
        "must match both, as in Celery) or an interval, `every 5s`"
    )
    next_run_at: datetime | None = Field(
        description="When the schedule next falls due (UTC), computed from it. An interval "
        "entry: one interval after its last send, or now if overdue; null before its first send"
    )
    last_run_at: datetime | None = Field(
        description="When beat last sent it (UTC); null before the first send"
    )
