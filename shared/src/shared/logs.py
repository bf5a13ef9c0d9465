"""Logging for every process: one line per event, JSON in deployments, readable on a laptop.

Context that should follow a piece of work through its log lines (the request id, the task id
and name) lives in a context variable, so a line logged anywhere below a request or a task
carries it without being passed along. Personal data stays out: log ids, never emails or task
arguments' content.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["json", "text"]

_context: ContextVar[dict[str, object] | None] = ContextVar("log_context", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is context.
# uvicorn adds `color_message`, its message with terminal colour codes, for its own formatter.
_RECORD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Attach fields to every line logged inside the block (in this task or coroutine)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def context_value(name: str) -> object:
    return (_context.get() or {}).get(name)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    extra = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}
    return {**(_context.get() or {}), **extra}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return f"{text}  [{fields}]" if fields else text


def _drop_celery_trace_data(record: logging.LogRecord) -> bool:
    """Celery's line for a failed task passes its whole context as `extra={"data": ...}`:
    the traceback a second time beside `exc_info`, and the task's arguments. Keep the ids."""
    data = vars(record).pop("data", None)
    if isinstance(data, dict):
        record.task_id = data.get("id")
        record.task_name = data.get("name")
    return True


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Route every logger (ours, uvicorn's, Celery's) through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "celery", "celery.task", "celery.redirected"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Each of these repeats a line we log ourselves, with the request or task id added.
    for name in ("uvicorn.access", "celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trace = logging.getLogger("celery.app.trace")
    trace.filters[:] = [_drop_celery_trace_data]
