"""The two kinds of worker, and the one command line that starts each.

Tasks split by nature. I/O-bound runs (emails, the outbox relay: the `default` queue) spend
their time waiting on the network and belong on the concurrent worker. CPU- or lock-heavy batch
jobs (the `maintenance` queue) keep a prefork worker, one job per process, so a long batch never
delays an email and an email burst never starves a batch.

`make run` (scripts/run_stack.py), compose.yaml and the Kubernetes manifests all start the
kinds with `command()`; tests/deploy checks that the files say the same. Each kind runs with
WORKER_NAME set to its name, which names its heartbeat files, its `worker` metrics label and,
through `-n <name>@%h`, its Celery node.

The concurrent kind keeps up to 100 runs in flight in one process, on one event loop
(`-P threads`: see worker.celery_app and worker.concurrent), with at most WORKER_DB_POOL_SIZE
database connections and SMTP_POOL_SIZE SMTP sessions whatever that number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.contracts import Queue


@dataclass(frozen=True)
class WorkerKind:
    name: str
    queues: tuple[Queue, ...]
    pool: str
    concurrency: int

    @property
    def capacity(self) -> int:
        """Runs one worker of this kind executes at once: the autoscaler's target per pod."""
        return self.concurrency

    def command(self, launcher: Sequence[str] = ("celery",)) -> list[str]:
        """The worker's command line; `launcher` is `celery` (images), or `python -m celery`."""
        return [
            *launcher, "-A", "worker.celery_app", "worker",
            "-P", self.pool, "-c", str(self.concurrency),
            "-Q", ",".join(queue.value for queue in self.queues),
            "-n", f"{self.name}@%h", "--loglevel", "INFO",
        ]  # fmt: skip


CONCURRENT = WorkerKind("concurrent", (Queue.DEFAULT,), pool="threads", concurrency=100)
PREFORK = WorkerKind("prefork", (Queue.MAINTENANCE,), pool="prefork", concurrency=2)
KINDS = (CONCURRENT, PREFORK)
