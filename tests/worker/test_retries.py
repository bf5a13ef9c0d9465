"""Retries, permanent failures and poison messages, in a real worker against real SMTP: the
concurrent kind (`-P threads`), which runs the welcome emails in production."""

import uuid
from collections.abc import AsyncIterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis.asyncio import Redis
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker import Broker, TaskMessage
from shared.contracts import SEND_WELCOME_EMAIL
from shared.models import TaskRun, TaskState, User
from shared.settings import settings
from tests.fixtures.ports import free_port
from tests.fixtures.processes import Processes
from tests.fixtures.runs import publish, wait_for_state
from tests.fixtures.smtp import Mailbox
from tests.fixtures.users import insert_users
from tests.worker.probe_tasks import PROBE_APP, SLOW_UPDATE

FAST_RETRIES = {"TASK_RETRY_BACKOFF_MAX": "1", "TASK_MAX_RETRIES": "3"}


class RefusingMailbox:
    """An SMTP server that refuses every recipient for good (550)."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return "550 5.1.1 no such mailbox"


@pytest.fixture
async def smtp_later() -> AsyncIterator[tuple[int, list[Controller]]]:
    """A port where no SMTP server listens yet; the test starts one there when it likes."""
    started: list[Controller] = []
    yield free_port(), started
    for controller in started:
        controller.stop()


async def test_an_unreachable_mail_server_is_retried_until_it_answers(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine,
    smtp_later: tuple[int, list[Controller]],
) -> None:  # fmt: skip
    port, started = smtp_later
    processes.worker(pool="threads", SMTP_HOST="127.0.0.1", SMTP_PORT=str(port),
                     TASK_MAX_RETRIES="50", TASK_RETRY_BACKOFF_MAX="1")  # fmt: skip
    [user_id] = await insert_users(e2e_engine, "later@example.com")
    [run_id] = await publish(e2e_redis, SEND_WELCOME_EMAIL.name, user_id=user_id)
    retrying = await wait_for_state(e2e_engine, run_id, TaskState.RETRYING)
    assert retrying.error is not None
    assert "connect" in retrying.error.lower()

    mailbox = Mailbox(port=port)
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    started.append(controller)
    done = await wait_for_state(e2e_engine, run_id, TaskState.SUCCEEDED)
    assert done.attempts >= 2
    assert done.result is True
    assert len(mailbox.to("later@example.com")) == 1


async def test_a_refused_recipient_fails_at_once_with_the_error_recorded(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine
) -> None:
    port = free_port()
    controller = Controller(RefusingMailbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        processes.env.update(FAST_RETRIES)
        processes.worker(pool="threads", SMTP_HOST="127.0.0.1", SMTP_PORT=str(port))
        [user_id] = await insert_users(e2e_engine, "nobody@example.com")
        [run_id] = await publish(e2e_redis, SEND_WELCOME_EMAIL.name, user_id=user_id)
        failed = await wait_for_state(e2e_engine, run_id, TaskState.FAILED)
    finally:
        controller.stop()
    assert failed.attempts == 1
    assert failed.error is not None
    assert "550" in failed.error
    assert failed.finished_at is not None


async def test_retries_are_bounded(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine
) -> None:
    processes.env.update(FAST_RETRIES)
    processes.worker(pool="threads", SMTP_HOST="127.0.0.1", SMTP_PORT=str(free_port()))
    [user_id] = await insert_users(e2e_engine, "never@example.com")
    [run_id] = await publish(e2e_redis, SEND_WELCOME_EMAIL.name, user_id=user_id)
    failed = await wait_for_state(e2e_engine, run_id, TaskState.FAILED, timeout=60)
    assert failed.attempts == 1 + int(FAST_RETRIES["TASK_MAX_RETRIES"])


async def test_a_run_delivered_past_the_bound_is_failed_and_not_run(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine
) -> None:
    """A poison message (one that keeps killing its worker) shows as a run that started
    TASK_MAX_ATTEMPTS times without finishing: the next delivery fails it instead of running."""
    [user_id] = await insert_users(e2e_engine, "poison@example.com")
    run_id = uuid.uuid4()
    kwargs = {"user_id": user_id, "seconds": 0}
    async with e2e_engine.begin() as conn:
        await conn.execute(
            insert(TaskRun).values(
                id=run_id, name=SLOW_UPDATE.name, kwargs=kwargs, state=TaskState.STARTED,
                attempts=settings.task_max_attempts,
            )
        )  # fmt: skip
    processes.worker(app=PROBE_APP, pool="threads")
    await Broker(e2e_redis, timeout=5).publish(
        [TaskMessage(run_id, SLOW_UPDATE.name, kwargs, "default")]
    )
    failed = await wait_for_state(e2e_engine, run_id, TaskState.FAILED)
    assert failed.error is not None
    assert "not run again" in failed.error
    async with e2e_engine.connect() as conn:
        name = await conn.scalar(select(User.full_name).where(User.id == user_id))
    assert name == "poison"  # the task's effect never happened
