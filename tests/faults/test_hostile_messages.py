"""Messages the worker must refuse: a task name nobody registered, and a pickle payload (code
execution for whoever can write to Redis). Pushed straight onto the queue, as an attacker or a
confused producer would."""

import base64
import json
import os
import pickle
import uuid
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker import TaskMessage
from shared.contracts import SEND_WELCOME_EMAIL
from shared.models import TaskState
from tests.faults.stack import own_redis
from tests.fixtures.processes import Processes
from tests.fixtures.runs import queue_welcome_runs, runs_by_id
from tests.fixtures.smtp import Mailbox, smtp_env
from tests.fixtures.users import insert_users, numbered_emails
from tests.fixtures.waiting import eventually


class CreatesADirectory:
    """Unpickling this calls os.makedirs(path): proof that a payload was executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.makedirs, (self.path,)


def pickle_message(task_id: uuid.UUID, payload: object) -> str:
    """A well-formed envelope for a registered task, except that its body is a pickle."""
    envelope = json.loads(TaskMessage(task_id, SEND_WELCOME_EMAIL.name, {}, "default").encode())
    envelope["body"] = base64.b64encode(pickle.dumps(payload)).decode()
    envelope["content-type"] = "application/x-python-serialize"
    envelope["content-encoding"] = "binary"
    return json.dumps(envelope)


async def test_unregistered_and_pickle_messages_are_rejected_and_the_worker_goes_on(
    processes: Processes, e2e_engine: AsyncEngine, smtp_server: Mailbox, tmp_path: Path
) -> None:
    redis, _ = own_redis(processes)
    processes.env.update(smtp_env(smtp_server))
    worker = processes.worker()
    marker = tmp_path / "unpickled"
    unknown_id, pickle_id = uuid.uuid4(), uuid.uuid4()
    unknown = TaskMessage(unknown_id, "no.such.task", {"user_id": 1}, "default").encode()
    await redis.lpush("default", unknown, pickle_message(pickle_id, CreatesADirectory(marker)))

    worker.wait_for_output("Received unregistered task of type 'no.such.task'")
    worker.wait_for_output("untrusted content")
    # A normal run afterwards still goes through the same worker.
    [user_id] = await insert_users(e2e_engine, *numbered_emails("after", 1))
    [run_id] = await queue_welcome_runs(e2e_engine, redis, [user_id])

    async def succeeded() -> bool:
        run = (await runs_by_id(e2e_engine, [run_id])).get(run_id)
        return run is not None and run.state == TaskState.SUCCEEDED

    await eventually(succeeded, 30, "a normal run after the hostile messages")
    assert worker.popen.poll() is None
    assert not marker.exists(), "the pickle payload was executed"
    assert await runs_by_id(e2e_engine, [unknown_id, pickle_id]) == {}  # neither ever started
    assert [str(m["To"]) for m in smtp_server.messages] == ["after0@example.com"]

    # Both were taken off the queue for good (rejected, not requeued to loop forever). The
    # normal run's ack follows its SUCCEEDED by a moment: wait for it, well within the
    # visibility timeout (a hostile message left unacked would stay there until then).
    async def nothing_left() -> bool:
        return await redis.llen("default") == 0 and await redis.hlen("unacked") == 0

    await eventually(nothing_left, 10, "the queue and the unacked messages to be empty")
    await redis.aclose()
