"""The files the probes read (see worker.probe): written by the worker's main process.

Only the main process writes them: it consumes messages and hands them to the pool, so its
event loop being alive is what "the worker is alive" means. The heartbeat is a timer on that
loop, so it stops when the loop stops (stuck, or SIGSTOP), while a long task in a pool child
does not delay it. The handlers here only touch and remove files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_init, worker_ready, worker_shutdown

from shared.settings import settings
from worker.probe import heartbeat_file, ready_file


def heartbeat_path(name: str) -> Path:
    return Path(settings.heartbeat_dir) / name


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A consumer step: touches <WORKER_NAME>.heartbeat every HEARTBEAT_INTERVAL seconds from
    the main process's event loop (the consumer's timer is the prefork hub's timer)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.path = heartbeat_path(heartbeat_file(settings.worker_name))
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        touch(self.path)
        self.tref = parent.timer.call_repeatedly(settings.heartbeat_interval, touch, (self.path,))

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


def _forget_previous_run(**_: object) -> None:
    # An emptyDir outlives a restarted container: a ready file left by a killed worker must not
    # make this one look ready before it consumes. Only this worker's own files (its name):
    # another worker writing to the same directory keeps its own.
    remove(heartbeat_path(ready_file(settings.worker_name)))
    remove(heartbeat_path(heartbeat_file(settings.worker_name)))


def _ready(**_: object) -> None:
    touch(heartbeat_path(heartbeat_file(settings.worker_name)))
    touch(heartbeat_path(ready_file(settings.worker_name)))


def _not_ready(**_: object) -> None:
    remove(heartbeat_path(ready_file(settings.worker_name)))


def install(app: Celery) -> None:
    """Add the heartbeat to the worker's consumer and the readiness file to its life cycle."""
    app.steps["consumer"].add(WorkerHeartbeat)
    worker_init.connect(_forget_previous_run, weak=False)
    worker_ready.connect(_ready, weak=False)
    worker_shutdown.connect(_not_ready, weak=False)
