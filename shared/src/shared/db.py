"""The one engine factory. Each process kind builds its engine once, after any fork, and names
itself to PostgreSQL so `pg_stat_activity` shows who holds each connection."""

from __future__ import annotations

from typing import Literal, TypeAlias

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from shared.settings import settings

ProcessKind: TypeAlias = Literal["api", "worker", "beat", "migrate", "test", "bench"]


def make_engine(
    kind: ProcessKind,
    *,
    pool_size: int | None = None,
    max_overflow: int = 0,
    pre_ping: bool = False,
    synchronous_commit: bool = True,
    url: URL | None = None,
) -> AsyncEngine:
    """An engine labelled with its process kind; `pool_size=None` means no pool (NullPool).

    `pre_ping` checks each pooled connection before use (one round trip), so a PostgreSQL
    restart costs no failed request; worth it for the API, whose requests are not retried.

    `synchronous_commit=False` lets a commit return before its WAL reaches the disk. Worker
    commits can afford it: a PostgreSQL crash loses at most the last moment of them, each
    effect together with its record, and redelivery or the relay's repair runs those tasks
    again. The API's commits are promises to clients and stay durable.

    Never call this at import time: an engine created before a fork shares its sockets with
    every child.
    """
    pool: dict[str, object] = (
        {"poolclass": NullPool}
        if pool_size is None
        else {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_recycle": 1800,
            "pool_pre_ping": pre_ping,
            "pool_timeout": 10,
        }
    )
    server_settings = {
        "application_name": f"backend.{kind}",
        "synchronous_commit": "on" if synchronous_commit else "off",
    }
    if kind == "worker":
        server_settings.update(worker_session_limits())
    return create_async_engine(
        url or settings.database,
        **pool,
        connect_args={"server_settings": server_settings, "timeout": 5, "command_timeout": 60},
    )


def worker_session_limits() -> dict[str, str]:
    """How long PostgreSQL keeps what a worker that stopped answering holds.

    A worker's runs go back to the broker within seconds when it dies or freezes, and the next
    worker needs the row locks the old one took. Without limits PostgreSQL keeps them until
    TCP gives up on the dead client (two hours and more by default): a frozen worker's session
    is ended after WORKER_IDLE_IN_TRANSACTION_TIMEOUT idle inside a transaction, and a client
    whose host vanished is found by keepalives after 10 + 3 x 5 s of silence.
    """
    idle_ms = round(settings.worker_idle_in_transaction_timeout * 1000)
    return {
        "idle_in_transaction_session_timeout": str(idle_ms),
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
    }


def make_sessionmaker(bind: AsyncEngine | AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """Objects stay readable after commit: services return what they committed."""
    return async_sessionmaker(bind, expire_on_commit=False)


async def autocommit_statement(db: AsyncSession) -> None:
    """Let the session's next statement commit on its own, with no BEGIN and no COMMIT: two
    round trips fewer while a pooled connection is held, for work that is one statement and
    so atomic by itself. A session bound to a connection runs inside its owner's transaction
    (tests roll theirs back; a caller may be composing several writes): it is left as it is.
    Call `db.commit()` afterwards all the same, to hand the connection back."""
    if isinstance(db.bind, AsyncConnection):
        return
    await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
