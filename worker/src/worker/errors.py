"""Which failures a task retries. Transient means "the same call may work in a moment": the
database or the mail server is unreachable, slow or restarting. Everything else (bad arguments,
a refused recipient, a bug) fails at once, with the error recorded on the run."""

from aiosmtplib import (
    SMTPConnectError,
    SMTPConnectTimeoutError,
    SMTPReadTimeoutError,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from shared.broker import PublishError

ERROR_TEXT_LIMIT = 2000


class ClaimHeld(Exception):
    """Another run holds the claim on what this run would change (it is sending the same
    welcome email right now): try again once that claim can have expired, `retry_after`
    seconds from now, so waiting for a dead holder does not use up the retries."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # includes ConnectionError: refused, reset
    TimeoutError,
    OperationalError,
    InterfaceError,
    DisconnectionError,
    SMTPConnectError,
    SMTPConnectTimeoutError,
    SMTPReadTimeoutError,
    SMTPServerDisconnected,
    PublishError,
    ClaimHeld,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, SMTPResponseException):  # 4xx: try again later; 5xx: never
        return 400 <= exc.code < 500
    return isinstance(exc, _TRANSIENT)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]


class RunSupersededError(Exception):
    """The run was claimed again (its message went to another worker while this one was dead
    to the broker, frozen or cut off), or finished, since this attempt claimed it: this attempt
    must not commit an effect or record an outcome."""

    def __init__(self, attempt: int) -> None:
        super().__init__(f"attempt {attempt} is no longer the run's current attempt")
