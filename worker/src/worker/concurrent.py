"""The concurrent runtime: many runs in flight per worker process, on one event loop.

Celery 5 has no async tasks, so the worker keeps Celery's `threads` pool for what it does well
(taking messages, acking them late, retrying, shutting down warmly) and moves the work off
those threads: each pool thread only waits while its run's async core runs on the process's
ONE event loop, which lives in a thread of its own (`LoopThread`). A hundred pool threads are a
hundred runs in flight; they share one engine with a bounded pool, one Redis client and one
SMTP session pool, all bound to that loop.

What the threads pool does not do by itself, and Celery's prefork pool did, `ConcurrentPool`
adds:

- Time limits (celery#9203: the threads pool ignores them). The soft limit is enforced on the
  loop by the run itself (`worker.recording`: the core is cancelled and the run recorded as its
  contract says), so it never holds up the other runs. The hard limit is the watchdog's: a run
  still going `TASK_TIME_LIMIT` seconds after it started has ignored its cancellation or blocked
  the loop (a blocking call, a CPU loop), so every run of this process is stuck behind it. The
  watchdog then exits the process: late acks give every unacked message back to the queue, and
  each run's claim keeps its effect once when it runs again.
- Cancelling a job (`terminate`): Celery cancels the unacked late-ack runs when the broker
  connection is lost (`worker_cancel_long_running_tasks_on_connection_loss`), because their
  acks are lost and the messages will be delivered again. The prefork pool kills the child;
  here the run's core is cancelled on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from celery.concurrency.base import apply_target
from celery.concurrency.thread import TaskPool as ThreadTaskPool

log = logging.getLogger("worker.runtime")

T = TypeVar("T")

# The watchdog looks at the runs this often; the hard limit is enforced within this delay.
WATCHDOG_INTERVAL = 1.0
# How the watchdog exits: like a child killed at its hard limit, so the pod restarts.
HARD_LIMIT_EXIT_STATUS = 70


class LoopThread:
    """An event loop running forever in a daemon thread, accepting coroutines from any thread."""

    def __init__(self, name: str = "task-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, core: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(core, self.loop)

    def run(self, core: Coroutine[Any, Any, T]) -> T:
        """Run `core` on the loop and wait for its result in the calling thread. The calling
        thread's job (if a pool thread runs it) can cancel it."""
        future = self.submit(core)
        job = current_job()
        if job is not None:
            job.attach(future)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # the caller gave up (an exception in this thread): so does the core
            raise
        finally:
            if job is not None:
                job.detach()

    def call(self, core: Coroutine[Any, Any, T]) -> T:
        """Run `core` on the loop to completion, without a job (start-up and shutdown)."""
        return self.submit(core).result()

    def stop(self) -> None:
        """Stop the loop after its runs ended, then close it."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class Job:
    """One message handed to the pool: when it started, its hard limit, and the core running on
    the loop for it, so that the pool can cancel it."""

    def __init__(self, hard_limit: float | None) -> None:
        self.hard_limit = hard_limit
        self.started: float | None = None
        self._future: concurrent.futures.Future[Any] | None = None
        self._cancelled = False
        self._lock = threading.Lock()

    def attach(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._future = future
            if self._cancelled:
                future.cancel()

    def detach(self) -> None:
        with self._lock:
            self._future = None

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._future is not None:
                self._future.cancel()

    def overdue(self, now: float) -> bool:
        return (
            self.hard_limit is not None
            and self.started is not None
            and now - self.started > self.hard_limit
        )


_local = threading.local()


def current_job() -> Job | None:
    job: Job | None = getattr(_local, "job", None)
    return job


class CancellableResult:
    """What Celery keeps of an applied job (as the threads pool's ApplyResult), plus
    `terminate`, which cancels the run's core."""

    def __init__(self, future: concurrent.futures.Future[Any], job: Job) -> None:
        self.f = future
        self.get = future.result
        self.job = job

    def wait(self, timeout: float | None = None) -> None:
        concurrent.futures.wait([self.f], timeout)

    def terminate(self, signal: int | None = None) -> None:
        self.job.cancel()


class ConcurrentPool(ThreadTaskPool):
    """Celery's threads pool, plus cancellable jobs and a hard-limit watchdog (see above)."""

    executor: concurrent.futures.ThreadPoolExecutor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._jobs: set[Job] = set()
        self._results: dict[Job, CancellableResult] = {}
        self._jobs_lock = threading.Lock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    def on_start(self) -> None:
        super().on_start()
        self._watchdog = threading.Thread(target=self._watch, name="hard-limit", daemon=True)
        self._watchdog.start()

    def on_stop(self) -> None:
        super().on_stop()  # waits for the runs in flight
        self._stopping.set()

    def on_apply(  # type: ignore[override]
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        timeout: float | None = None,
        **_: Any,
    ) -> CancellableResult:
        job = Job(hard_limit=timeout)
        future = self.executor.submit(
            self._run_job, job, target, args, kwargs, callback, accept_callback
        )
        result = CancellableResult(future, job)
        # Celery keeps only a weak reference to the result: hold it while the job may run, or
        # its `terminate` is gone by the time the broker connection drops.
        with self._jobs_lock:
            self._results[job] = result
        future.add_done_callback(lambda _: self._forget(job))
        return result

    def _forget(self, job: Job) -> None:
        with self._jobs_lock:
            self._results.pop(job, None)

    def _run_job(self, job: Job, *args: Any) -> Any:
        job.started = time.monotonic()
        _local.job = job
        with self._jobs_lock:
            self._jobs.add(job)
        try:
            return apply_target(*args)
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)
            _local.job = None

    def terminate_job(self, pid: int | None, signal: int | None = None) -> None:
        """Every job of this pool has the process's pid: the job's own result cancels it."""

    def _watch(self) -> None:
        while not self._stopping.wait(WATCHDOG_INTERVAL):
            now = time.monotonic()
            with self._jobs_lock:
                overdue = [job for job in self._jobs if job.overdue(now)]
            if not overdue:
                continue
            for job in overdue:
                job.cancel()
            log.critical(
                "runs past the hard time limit: exiting, their messages go back to the queue",
                extra={"overdue_runs": len(overdue)},
            )
            logging.shutdown()
            os._exit(HARD_LIMIT_EXIT_STATUS)
