"""Liveness and readiness probes for the worker and beat pods: `python -m worker.probe ...`.

    python -m worker.probe beat [--max-age SECONDS]            beat's loop is alive
    python -m worker.probe worker [--max-age SECONDS]          the worker's main process is alive
    python -m worker.probe worker --ready [--max-age SECONDS]  ... and it is consuming
    python -m worker.probe worker --name prefork ...           the worker named `prefork`

A probe runs every few seconds in every pod, so it must be cheap and must not depend on the
thing it checks: it reads the age of a file and exits, importing nothing but the standard
library (not the Celery app, not the settings object, not SQLAlchemy). `celery inspect ping`
would instead import the app, go through the broker, and take seconds.

The files, in HEARTBEAT_DIR (default /tmp; an emptyDir in the pods), written by
worker.heartbeat and worker.beat. A worker's files carry its WORKER_NAME (`--name`, default
the WORKER_NAME of the probe's environment, else `worker`), so the two kinds of worker can
share one HEARTBEAT_DIR on a laptop and each probe reports its own:

- `beat.heartbeat`: touched on every tick of beat's loop, at least every BEAT_MAX_LOOP_INTERVAL
  seconds, by the lock holder and by a standby waiting for the lock alike, so a healthy standby
  passes its liveness probe.
- `<name>.heartbeat`: touched every HEARTBEAT_INTERVAL seconds by a timer on the event loop of
  the worker's main process. The pool children run the tasks, so a long task does not stop it;
  a stuck or stopped main process does.
- `<name>.ready`: written once the worker consumes, removed when it shuts down (and when a
  restarted container starts, since an emptyDir outlives the container).

Bounds: a heartbeat older than `--max-age` (default DEFAULT_MAX_AGE, 30 s: six missed 5 s beats)
fails the probe; so does a missing file, so give the pods a startup probe or an initial delay.
Exit status: 0 healthy, 1 unhealthy; one line on stderr says why.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

BEAT_HEARTBEAT = "beat.heartbeat"
DEFAULT_WORKER_NAME = "worker"  # the same default as shared.settings
WORKER_HEARTBEAT = f"{DEFAULT_WORKER_NAME}.heartbeat"
WORKER_READY = f"{DEFAULT_WORKER_NAME}.ready"
DEFAULT_MAX_AGE = 30.0
DEFAULT_HEARTBEAT_DIR = "/tmp"  # noqa: S108 - the same default as shared.settings


def heartbeat_file(name: str) -> str:
    return f"{name}.heartbeat"


def ready_file(name: str) -> str:
    return f"{name}.ready"


def heartbeat_dir() -> Path:
    # Read directly rather than through shared.settings, which would import pydantic and
    # validate every setting on each probe run: the probe must stay light.
    return Path(os.environ.get("HEARTBEAT_DIR") or DEFAULT_HEARTBEAT_DIR)  # noqa: TID251


def worker_name() -> str:
    return os.environ.get("WORKER_NAME") or DEFAULT_WORKER_NAME  # noqa: TID251 - as above


def check_fresh(path: Path, max_age: float) -> str | None:
    """Why the heartbeat at `path` is unhealthy, or None when it is fresh enough."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return f"{path} does not exist (not started yet, or not running)"
    if age > max_age:
        return f"{path} is {age:.1f}s old (bound {max_age:g}s)"
    return None


def check(
    component: str,
    *,
    ready: bool,
    max_age: float,
    directory: Path,
    name: str = DEFAULT_WORKER_NAME,
) -> str | None:
    if component == "beat":
        return check_fresh(directory / BEAT_HEARTBEAT, max_age)
    problem = check_fresh(directory / heartbeat_file(name), max_age)
    ready_path = directory / ready_file(name)
    if problem is None and ready and not ready_path.exists():
        problem = f"{ready_path} does not exist (not consuming yet, or stopping)"
    return problem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("component", choices=["beat", "worker"])
    parser.add_argument("--ready", action="store_true", help="worker readiness, not liveness")
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE, metavar="SECONDS")
    parser.add_argument("--name", help="the worker's WORKER_NAME (default: from the environment)")
    args = parser.parse_args(argv)
    if args.component != "worker" and (args.ready or args.name):
        parser.error("--ready and --name apply to the worker only")
    problem = check(
        args.component,
        ready=args.ready,
        max_age=args.max_age,
        directory=heartbeat_dir(),
        name=args.name or worker_name(),
    )
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
