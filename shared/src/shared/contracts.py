"""Every task the system knows, declared once: stable name, arguments, result, queue.

A task name is a public contract (queued messages and beat's schedule carry it), so it is
`domain.verb_object` and never a module path. The API enqueues through these objects and the
worker binds each implementation to one of them; a test checks the two sets match one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class Queue(StrEnum):
    DEFAULT = "default"  # short tasks, and the outbox relay
    MAINTENANCE = "maintenance"  # long batch jobs, so they never delay the short ones


class TaskArgs(BaseModel):
    """Arguments travel as JSON kwargs; strict, so `"5"` is not an int and typos are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoArgs(TaskArgs):
    pass


BIGINT_MAX = 2**63 - 1


class SendWelcomeEmailArgs(TaskArgs):
    user_id: int = Field(ge=1, le=BIGINT_MAX, description="The user to welcome")


class PruneLogsArgs(TaskArgs):
    days: int = Field(ge=1, le=36_500, description="Keep finished runs younger than this")


ArgsT = TypeVar("ArgsT", bound=TaskArgs)
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class TaskContract(Generic[ArgsT, ResultT]):
    name: str
    args: type[ArgsT]
    result: type[ResultT]
    queue: Queue
    enqueueable: bool  # may an admin enqueue it through POST /tasks?
    description: str = ""  # one line, shown by GET /task-types
    # Seconds a run may take before it is cancelled (None: TASK_SOFT_TIME_LIMIT), and whether
    # such a run is retried (RETRYING, with backoff) or recorded FAILED.
    soft_time_limit: float | None = None
    retry_on_time_limit: bool = False


# A welcome email cut off by its time limit was waiting on a slow network: try it again.
SEND_WELCOME_EMAIL = TaskContract(
    "users.send_welcome_email",
    SendWelcomeEmailArgs,
    bool,
    Queue.DEFAULT,
    enqueueable=True,
    description="Send a user the welcome email once; false when there was nothing to send.",
    retry_on_time_limit=True,
)
DEACTIVATE_INACTIVE_USERS = TaskContract(
    "users.deactivate_inactive_users",
    NoArgs,
    int,
    Queue.MAINTENANCE,
    enqueueable=True,
    description="Deactivate users idle for more than 90 days; returns how many.",
)
PRUNE_LOGS = TaskContract(
    "maintenance.prune_logs",
    PruneLogsArgs,
    int,
    Queue.MAINTENANCE,
    enqueueable=True,
    description="Delete finished task runs older than `days`; returns how many.",
)
RELAY_OUTBOX = TaskContract(
    "outbox.relay",
    NoArgs,
    int,
    Queue.DEFAULT,
    enqueueable=False,
    description="Publish runs the API could not, repair runs the broker lost; returns how many.",
)

AnyContract = TaskContract[TaskArgs, object]

CONTRACTS: dict[str, AnyContract] = {
    contract.name: contract  # type: ignore[misc]  # invariance: each is a TaskContract of a subclass
    for contract in (SEND_WELCOME_EMAIL, DEACTIVATE_INACTIVE_USERS, PRUNE_LOGS, RELAY_OUTBOX)
}
