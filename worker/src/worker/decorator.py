"""`@task(CONTRACT)`: the one way to declare a task (docs/tasks.md).

    @task(SEND_WELCOME_EMAIL)
    async def send_welcome_email(args: SendWelcomeEmailArgs, db: AsyncSession) -> bool: ...

The contract is named once. From it the decorator takes the Celery task's name, its retries
and time limits (its queue comes from the routes, built from the same contracts), and it
checks the core against it when the module is imported: an `async def` taking the contract's
arguments model and a session, returning the contract's result type. A mismatch is a TypeError
that says what to change (mypy finds the same from the types).

What Celery runs is a body that takes the message's kwargs as they came (`**kwargs`), not
typed parameters: the contract's model validates them (strictly, so `"5"` is not an int) and a
failure is recorded on the run like any other; typed parameters would fail in Celery's own
argument check, before any record exists. The core receives the validated model.

The core runs in one transaction with its run's SUCCEEDED record (worker.recording), so the
effect and its record commit together. A core that commits on its own (a batch job, so each
batch holds its locks briefly; or a claim committed before a slow network call) must say so
with `commits=True`; without the flag, a commit inside the core fails the run, so "the effect
and its record commit together" holds wherever it is not declared otherwise.

The decorated name stays callable as the core (`await send_welcome_email(args, db)`), which is
how tests run it on an injected session; `.celery` is the registered Celery task.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Generic

from celery import Task
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import ArgsT, ResultT, TaskContract
from shared.settings import settings
from worker.celery_app import app
from worker.recording import Core, run_recorded, run_unrecorded


class RecordedTask(Generic[ArgsT, ResultT]):
    """A core bound to its contract, registered with Celery."""

    def __init__(
        self,
        contract: TaskContract[ArgsT, ResultT],
        core: Core[ArgsT, ResultT],
        celery_task: Task[Any, Any],
        commits: bool,
    ) -> None:
        self.contract = contract
        self.core = core
        self.celery = celery_task
        self.commits = commits
        self.__doc__ = core.__doc__
        self.__name__ = getattr(core, "__name__", contract.name)

    def __call__(self, args: ArgsT, db: AsyncSession) -> Awaitable[ResultT]:
        """The core itself, on the session given (its caller commits)."""
        return self.core(args, db)


def task(
    contract: TaskContract[ArgsT, ResultT], *, commits: bool = False
) -> Callable[[Core[ArgsT, ResultT]], RecordedTask[ArgsT, ResultT]]:
    """Register `core` as the Celery task of `contract`, its runs recorded (or, for a quiet
    contract, unrecorded: see TaskContract.quiet)."""

    def register(core: Core[ArgsT, ResultT]) -> RecordedTask[ArgsT, ResultT]:
        check_core(contract, core)

        def body(self: Task[Any, Any], /, **kwargs: object) -> ResultT:
            if contract.quiet:
                return run_unrecorded(self, contract, core, kwargs)
            return run_recorded(self, contract, core, kwargs, commits)

        # Not functools.wraps: Celery checks a message's arguments against the signature it
        # finds, and it must find `**kwargs`, not the core's.
        body.__name__ = body.__qualname__ = getattr(core, "__name__", "core")
        body.__module__ = core.__module__
        body.__doc__ = core.__doc__
        options: dict[str, Any] = {
            "name": contract.name,
            "bind": True,
            "max_retries": (
                settings.task_max_retries if contract.max_retries is None else contract.max_retries
            ),
        }
        # The soft limit is the runtime's (worker.recording reads it from the contract).
        if contract.time_limit is not None:
            options["time_limit"] = contract.time_limit
        celery_task = app.task(**options)(body)
        recorded = RecordedTask(contract, core, celery_task, commits)
        _DECLARED[contract.name] = recorded
        return recorded

    return register


# Every task declared with @task, by name: the contract test compares it with the app's tasks.
_DECLARED: dict[str, RecordedTask[Any, Any]] = {}


def declared_tasks() -> dict[str, RecordedTask[Any, Any]]:
    return dict(_DECLARED)


def check_core(contract: TaskContract[Any, Any], core: Callable[..., object]) -> None:
    """Fail at import, saying what to change, when a core does not fit its contract."""
    where = f"@task({contract.name}) on {getattr(core, '__qualname__', core)!r}"
    if not inspect.iscoroutinefunction(core):
        raise TypeError(f"{where}: a task core must be an `async def`")
    parameters = list(inspect.signature(core).parameters.values())
    if len(parameters) < 2:
        raise TypeError(
            f"{where}: the core takes (args: {contract.args.__name__}, db: AsyncSession)"
        )
    try:
        hints = typing.get_type_hints(core)
    except NameError as exc:
        raise TypeError(f"{where}: cannot resolve its annotations ({exc})") from None
    args_hint = hints.get(parameters[0].name)
    if args_hint is not contract.args:
        raise TypeError(
            f"{where}: its first parameter is annotated {_name(args_hint)}, but the contract's "
            f"arguments are {contract.args.__name__}; annotate it `{parameters[0].name}: "
            f"{contract.args.__name__}` or change the contract"
        )
    db_hint = hints.get(parameters[1].name)
    if db_hint is not AsyncSession:
        raise TypeError(
            f"{where}: its second parameter is annotated {_name(db_hint)}; annotate it "
            f"`{parameters[1].name}: AsyncSession` (the session the run is recorded in)"
        )
    if any(p.default is inspect.Parameter.empty for p in parameters[2:]):
        raise TypeError(f"{where}: parameters after the session need defaults (tests inject them)")
    result_hint = hints.get("return")
    if result_hint != contract.result:
        raise TypeError(
            f"{where}: it returns {_name(result_hint)}, but the contract's result is "
            f"{_name(contract.result)}; make them the same"
        )


def _name(hint: object) -> str:
    if hint is None:
        return "nothing (no annotation)"
    return getattr(hint, "__name__", None) or repr(hint)
