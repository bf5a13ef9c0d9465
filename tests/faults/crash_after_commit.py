"""The API with a fault point between commit and publish, for fault tests only:
`uvicorn tests.faults.crash_after_commit:create_app --factory`.

A request commits its user and welcome run, then hands the run to the publisher; here the
process dies at that hand-off, the worst moment: the row is committed, no message was sent,
and the client never hears back. Product code stays free of this hook.
"""

import os

from fastapi import FastAPI

from api import main
from api.publisher import Publisher

CRASH_EXIT_CODE = 17


def _die(self: Publisher, runs: object) -> None:
    os._exit(CRASH_EXIT_CODE)  # no cleanup, no lifespan shutdown: as a SIGKILL would


def create_app() -> FastAPI:
    Publisher.submit = _die  # type: ignore[method-assign]
    return main.create_app()
