"""Prometheus metrics of the worker and of beat, each served on a port of its own.

The worker is a prefork pool: tasks run in child processes, so the children record into files
under PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, which reads that variable
when it is imported: the process that starts the worker must set it) and the main process serves
their sum on WORKER_METRICS_PORT. Queue lengths are read from Redis, and the runs a worker
holds from its main process's own bookkeeping, when Prometheus scrapes. Beat is one process and
serves on BEAT_METRICS_PORT. Both listen on METRICS_BIND_ADDRESS.

Each worker has a multiprocess folder of its own (the manifests and compose give every container
its own /tmp; `make run` one folder per worker). At start a worker clears the files that earlier
processes left there, and refuses to start when a file belongs to another live process: that
is another worker sharing the folder, whose counts we would delete and then add to ours.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from celery.signals import beat_init, worker_init, worker_ready
from celery.worker import state as worker_state
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from shared.contracts import Queue
from shared.settings import settings

log = logging.getLogger(__name__)

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

TASKS_STARTED = Counter("worker_tasks_started_total", "Task runs started", ["task"])
TASKS_SUCCEEDED = Counter("worker_tasks_succeeded_total", "Task runs succeeded", ["task"])
TASKS_FAILED = Counter("worker_tasks_failed_total", "Task runs failed for good", ["task"])
TASKS_RETRIED = Counter("worker_tasks_retried_total", "Task runs sent back for a retry", ["task"])
TASKS_SUPERSEDED = Counter(
    "worker_tasks_superseded_total",
    "Attempts rolled back because their run had been claimed again (see worker.recording)",
    ["task"],
)
TASK_DURATION = Histogram(
    "worker_task_duration_seconds",
    "Task run duration, claim to outcome",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class QueueLengths(Collector):
    """Messages waiting in each queue, read at scrape time (a growing queue is the first sign
    that workers are too few or stuck)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("worker_queue_length", "Messages waiting", labels=["queue"])
        try:
            with Redis.from_url(
                settings.redis_url.get_secret_value(), socket_timeout=1, socket_connect_timeout=1
            ) as redis:
                for queue in Queue:
                    family.add_metric([queue.value], float(redis.llen(queue.value)))
        except (RedisError, OSError):
            log.warning("queue lengths unavailable: the broker does not answer")
        yield family


class RunsInFlight(Collector):
    """The runs this worker holds: received from the broker and not finished, running or
    prefetched. A worker that prefetches about its concurrency empties the queue's list in
    Redis, so queue length alone reads near 0 while the worker is saturated; queued plus in
    flight is the load (the autoscalers use it, see docs/deploy.md). Read in the main process,
    which receives every message, whatever the pool."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "worker_runs_in_flight", "Runs received and not finished", labels=["worker"]
        )
        family.add_metric([settings.worker_name], float(len(worker_state.reserved_requests)))
        yield family


def _serving_registry() -> CollectorRegistry:
    if MULTIPROCESS_DIR not in os.environ:  # noqa: TID251 - prometheus_client's own switch
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class SharedMetricsFolderError(RuntimeError):
    """Another live process writes to this worker's multiprocess metrics folder."""


def _pid_of(file: Path) -> int | None:
    """prometheus_client names its files `<type>[_<mode>]_<pid>.db`."""
    tail = file.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def forget_previous_run() -> None:
    """Counts from processes of an earlier run would add up with ours: start from zero. Runs in
    the main process before the pool starts, so a file of a live process other than this one
    belongs to another worker: refuse rather than delete its counts."""
    directory = os.environ.get(MULTIPROCESS_DIR)  # noqa: TID251 - see _serving_registry
    if not directory:
        return
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    files = list(folder.glob("*.db"))
    owners = {pid for pid in map(_pid_of, files) if pid is not None}
    others = sorted(pid for pid in owners if pid != os.getpid() and _alive(pid))
    if others:
        raise SharedMetricsFolderError(
            f"{MULTIPROCESS_DIR}={directory} holds the metrics of running processes {others}: "
            "give each worker a folder of its own"
        )
    for stale in files:
        stale.unlink()


def _serve(port: int, registry: CollectorRegistry) -> None:
    """Serve from threads that never take SIGTERM or SIGINT (they inherit this mask): beat
    blocks them in its main thread during a send, and a signal that lands on another thread
    would still run Celery's handler in the main thread, cutting the send in half."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        start_http_server(port, addr=settings.metrics_bind_address, registry=registry)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def serve_worker_metrics() -> None:
    if MULTIPROCESS_DIR not in os.environ:  # noqa: TID251 - see _serving_registry
        log.warning("%s is not set: task metrics of pool children are not served", MULTIPROCESS_DIR)
    registry = _serving_registry()
    registry.register(QueueLengths())
    registry.register(RunsInFlight())
    _serve(settings.worker_metrics_port, registry)


def serve_beat_metrics() -> None:
    _serve(settings.beat_metrics_port, _serving_registry())


def _forget_previous_run_or_stop(**_: object) -> None:
    try:
        forget_previous_run()
    except SharedMetricsFolderError as exc:
        # SystemExit, because Celery logs and swallows a receiver's ordinary exceptions.
        raise SystemExit(f"the worker refuses to start: {exc}") from None


def install() -> None:
    """Start the servers in the processes that serve: the worker's main process once its pool
    is up (so no child inherits the listening socket at start), and beat."""
    worker_init.connect(_forget_previous_run_or_stop, weak=False)
    worker_ready.connect(lambda **_: serve_worker_metrics(), weak=False)
    beat_init.connect(lambda **_: serve_beat_metrics(), weak=False)
