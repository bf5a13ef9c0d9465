"""The Celery app: `celery -A worker.celery_app worker` (or `beat`).

This module only assembles the app from modules with one job each:

- `worker.delivery`: broker, serialization, acknowledgement, queues and routes, and the
  transport workers fetch with (`worker.transport`: no message outside Redis before it is
  recorded as unacked);
- `worker.schedule`: beat's scheduler and the schedule, built from the task contracts;
- `worker.runtime`: each worker process's event loop, database sessions, broker and SMTP
  clients (`run_async`, `get_task_session`, `get_task_broker`), and why it is built that way;
- `worker.visibility`, `worker.heartbeat`, `worker.metrics`, `worker.schema_guard`,
  `worker.logs`: message renewal, probes, metrics, the start-up schema check and log lines,
  connected to Celery here and nowhere else;
- `worker.recording`: how a run keeps its task-run row current;
- `worker.decorator`: `@task(CONTRACT)`, the one way to declare a task (docs/tasks.md).

Tasks live in `worker/<domain>/tasks.py` and are found by autodiscovery when the worker starts.
`from worker.celery_app import app, get_task_session` works as the team's standard shows.
"""

from __future__ import annotations

import pkgutil

from celery import Celery

import worker
from worker import heartbeat, logs, metrics, recording, runtime, schema_guard, visibility
from worker.delivery import delivery_config
from worker.runtime import get_task_broker, get_task_session, run_async
from worker.schedule import beat_config

__all__ = ["app", "get_task_broker", "get_task_session", "run_async"]

app = Celery("backend")
app.conf.update(delivery_config())
app.conf.update(beat_config())

logs.install()
schema_guard.install()
runtime.install()
recording.install()
heartbeat.install(app)
visibility.install(app)
metrics.install()

# Every domain package of the worker (worker/<domain>/tasks.py) registers its tasks.
app.autodiscover_tasks(
    [module.name for module in pkgutil.iter_modules(worker.__path__, "worker.") if module.ispkg]
)
