"""Every task the system knows, declared once: stable name, arguments, result, queue, and how
it runs (retries, time limits, its periodic schedule if it has one).

A task name is a public contract (queued messages and beat's schedule carry it), so it is
`domain.verb_object` and never a module path. The API enqueues through these objects
(`shared.runs.enqueue`), the worker binds each implementation to one of them with
`@task(CONTRACT)` (`worker.decorator`), and beat's schedule is built from their `periodic`.
Plain data, with no Celery: the API image has none. docs/tasks.md shows how to add one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.schedules import Cron, Every, Periodic
from shared.settings import settings


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


# eq=False: a contract is itself (hashed by identity, so it can key caches), not its fields.
@dataclass(frozen=True, eq=False)
class TaskContract(Generic[ArgsT, ResultT]):
    """What a producer and the worker agree on. The limits default to the settings
    (TASK_MAX_RETRIES, TASK_SOFT_TIME_LIMIT, TASK_TIME_LIMIT), read when the worker starts."""

    name: str
    args: type[ArgsT]
    result: type[ResultT]
    queue: Queue
    enqueueable: bool  # may an admin enqueue it through POST /tasks?
    description: str = ""  # one line, shown by GET /task-types
    periodic: Periodic | None = None  # beat sends it on this schedule
    max_retries: int | None = None  # transient failures retried this many times
    # Seconds a run may take before it is cancelled (None: TASK_SOFT_TIME_LIMIT), and whether
    # such a run is retried (RETRYING, with backoff) or recorded FAILED.
    soft_time_limit: float | None = None
    retry_on_time_limit: bool = False
    time_limit: int | None = None  # killed after this (None: TASK_TIME_LIMIT)
    # Quiet tasks keep no task-run row and log only when they did something (their metrics
    # still count every run): for ticks that run every few seconds and mostly find nothing.
    quiet: bool = False

    def __post_init__(self) -> None:
        soft, hard = self.soft_time_limit, self.time_limit
        if soft is not None and hard is not None and not soft < hard:
            raise ValueError(f"{self.name}: soft_time_limit must be below time_limit")
        if self.quiet and self.max_retries != 0:
            raise ValueError(
                f"{self.name}: a quiet task keeps no record to retry on: max_retries=0"
            )


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
    periodic=Periodic(
        "deactivate-inactive-users",
        Cron("15 3 * * *"),
        setting="SCHEDULE_DEACTIVATE_INACTIVE_USERS",
    ),
)
PRUNE_LOGS = TaskContract(
    "maintenance.prune_logs",
    PruneLogsArgs,
    int,
    Queue.MAINTENANCE,
    enqueueable=True,
    description="Delete finished task runs older than `days`; returns how many.",
    periodic=Periodic(
        "prune-logs", Cron("45 3 * * *"), kwargs={"days": 30}, setting="SCHEDULE_PRUNE_LOGS"
    ),
)
RELAY_OUTBOX = TaskContract(
    "outbox.relay",
    NoArgs,
    int,
    Queue.DEFAULT,
    enqueueable=False,
    description="Publish runs the API could not, repair runs the broker lost; returns how many.",
    # Ticks sent while no worker runs expire instead of piling up.
    periodic=Periodic(
        "outbox-relay",
        Every(settings.outbox_relay_interval),
        expires=settings.outbox_relay_interval,
    ),
    max_retries=0,  # the next tick, a few seconds away, is the retry
    quiet=True,
)

AnyContract = TaskContract[TaskArgs, object]

CONTRACTS: dict[str, AnyContract] = {
    contract.name: contract  # type: ignore[misc]  # invariance: each is a TaskContract of a subclass
    for contract in (SEND_WELCOME_EMAIL, DEACTIVATE_INACTIVE_USERS, PRUNE_LOGS, RELAY_OUTBOX)
}
