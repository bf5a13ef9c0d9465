"""Every contract has its task, declared with @task(CONTRACT), and every task its contract."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import (
    CONTRACTS,
    PRUNE_LOGS,
    SEND_WELCOME_EMAIL,
    AnyContract,
    PruneLogsArgs,
    SendWelcomeEmailArgs,
)
from worker.celery_app import app
from worker.decorator import check_core, declared_tasks

HOW = "see docs/tasks.md, 'Adding an on-demand task'"


def test_every_contract_has_exactly_one_worker_task_and_back() -> None:
    app.loader.import_default_modules()  # runs the autodiscovery of worker/<domain>/tasks.py
    # celery.* are Celery's own; tests.* exist only in test workers (tests/worker/probe_tasks.py).
    implemented = {name for name in app.tasks if not name.startswith(("celery.", "tests."))}
    declared = declared_tasks()
    unlisted = sorted(name for name in implemented - set(CONTRACTS) if name in declared)
    assert not unlisted, (
        f"{unlisted} have a contract and @task, but their contracts are not in CONTRACTS at the "
        "end of shared/contracts.py: add them there (the routes, POST /tasks, GET /task-types "
        f"and beat read the contracts from it); {HOW}"
    )
    undeclared = sorted(implemented - set(CONTRACTS))
    assert not undeclared, (
        f"{undeclared} are plain Celery tasks: they run, but keep no task-run row, take no "
        f"retries or limits from a contract, and POST /tasks cannot enqueue them. Declare a "
        f"TaskContract in shared/contracts.py and decorate the core with @task(CONTRACT); {HOW}"
    )
    missing = sorted(set(CONTRACTS) - implemented)
    assert not missing, f"{missing} have a contract but no task in worker/<domain>/tasks.py"
    for name, contract in CONTRACTS.items():
        assert name in declared, f"{name} is registered without @task({name}); {HOW}"
        assert declared[name].contract is contract


def test_task_names_are_domain_verb_object_not_module_paths() -> None:
    for name in CONTRACTS:
        domain, _, action = name.partition(".")
        assert domain.isidentifier()
        assert action.isidentifier()
        assert not name.startswith(("worker.", "shared.", "api."))


def test_limits_and_retries_come_from_the_contract() -> None:
    app.loader.import_default_modules()
    for name, contract in CONTRACTS.items():
        celery_task = app.tasks[name]
        if contract.max_retries is not None:
            assert celery_task.max_retries == contract.max_retries
    assert app.tasks["outbox.relay"].max_retries == 0


async def _untyped(args: object, db: AsyncSession) -> bool:
    return True


def _not_async(args: SendWelcomeEmailArgs, db: AsyncSession) -> bool:
    return True


async def _no_session(args: SendWelcomeEmailArgs, db: object) -> bool:
    return True


async def _wrong_result(args: PruneLogsArgs, db: AsyncSession) -> bool:
    return True


@pytest.mark.parametrize(
    ("contract", "core", "hint"),
    [
        (SEND_WELCOME_EMAIL, _not_async, "a task core must be an `async def`"),
        (SEND_WELCOME_EMAIL, _untyped, "annotate it `args: SendWelcomeEmailArgs`"),
        (SEND_WELCOME_EMAIL, _no_session, "annotate it `db: AsyncSession`"),
        (PRUNE_LOGS, _wrong_result, "returns bool, but the contract's result is int"),
    ],
)
def test_a_core_that_does_not_fit_its_contract_says_what_to_change(
    contract: AnyContract, core: Callable[..., object], hint: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(hint)):
        check_core(contract, core)
