"""Prometheus metrics of the worker and of beat, each served on a port of its own.

The worker is a prefork pool: tasks run in child processes, so the children record into files
under PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, which reads that variable
when it is imported: the process that starts the worker must set it) and the main process serves
their sum on WORKER_METRICS_PORT. Queue lengths are read from Redis when Prometheus scrapes.
Beat is one process and serves on BEAT_METRICS_PORT.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from celery.signals import beat_init, worker_init, worker_ready
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


def _serving_registry() -> CollectorRegistry:
    if MULTIPROCESS_DIR not in os.environ:  # noqa: TID251 - prometheus_client's own switch
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def forget_previous_run() -> None:
    """Counts from processes of an earlier run would add up with ours: start from zero."""
    directory = os.environ.get(MULTIPROCESS_DIR)  # noqa: TID251 - see _serving_registry
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink()


def _serve(port: int, registry: CollectorRegistry) -> None:
    """Serve from threads that never take SIGTERM or SIGINT (they inherit this mask): beat
    blocks them in its main thread during a send, and a signal that lands on another thread
    would still run Celery's handler in the main thread, cutting the send in half."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        start_http_server(port, registry=registry)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def serve_worker_metrics() -> None:
    if MULTIPROCESS_DIR not in os.environ:  # noqa: TID251 - see _serving_registry
        log.warning("%s is not set: task metrics of pool children are not served", MULTIPROCESS_DIR)
    registry = _serving_registry()
    registry.register(QueueLengths())
    _serve(settings.worker_metrics_port, registry)


def serve_beat_metrics() -> None:
    _serve(settings.beat_metrics_port, _serving_registry())


def install() -> None:
    """Start the servers in the processes that serve: the worker's main process once its pool
    is up (so no child inherits the listening socket at start), and beat."""
    worker_init.connect(lambda **_: forget_previous_run(), weak=False)
    worker_ready.connect(lambda **_: serve_worker_metrics(), weak=False)
    beat_init.connect(lambda **_: serve_beat_metrics(), weak=False)
