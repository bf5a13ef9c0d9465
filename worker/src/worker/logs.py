"""The worker's and beat's log lines: the same JSON or text lines as the API."""

from __future__ import annotations

from celery.signals import setup_logging

from shared.logs import configure_logging
from shared.settings import settings


def _configure_logging(**_: object) -> None:
    """Connected, so Celery leaves logging to us."""
    configure_logging(settings.log_level, settings.effective_log_format)


def install() -> None:
    setup_logging.connect(_configure_logging, weak=False)
