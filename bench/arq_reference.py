"""The reference for `make bench-io`: the welcome email's work on arq, an asyncio-native queue.

Runs in an environment of its own (arq pins `redis<6`; bench/io.py creates it with uv), so it
imports nothing from the project. The work is the old welcome email's: lock the user, send over
a new SMTP connection (as arq's own example does), stamp, commit. arq runs it with
`max_jobs=100` and an asyncpg pool of 20 connections.

    python bench/arq_reference.py enqueue REDIS_URL FIRST_ID COUNT
    python bench/arq_reference.py work REDIS_URL DATABASE_URL SMTP_PORT
"""

from __future__ import annotations

import asyncio
import sys
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import asyncpg
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

MAX_JOBS = 100
DB_POOL = 20


async def welcome(ctx: dict[str, Any], user_id: int) -> bool:
    pool: asyncpg.Pool = ctx["db"]
    async with pool.acquire() as conn, conn.transaction():
        user = await conn.fetchrow(
            "SELECT email, full_name, welcome_email_sent_at FROM users WHERE id = $1 FOR UPDATE",
            user_id,
        )
        if user is None or user["welcome_email_sent_at"] is not None:
            return False
        message = EmailMessage()
        message["From"] = "Backend <no-reply@example.com>"
        message["To"] = user["email"]
        message["Subject"] = "Welcome aboard"
        message.set_content(f"Hello {user['full_name']},\n\nyour account is ready. Welcome!\n")
        await aiosmtplib.send(message, hostname="127.0.0.1", port=ctx["smtp_port"], timeout=10)
        await conn.execute("UPDATE users SET welcome_email_sent_at = now() WHERE id = $1", user_id)
        return True


async def enqueue(redis_url: str, first_id: int, count: int) -> None:
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    for user_id in range(first_id, first_id + count):
        await redis.enqueue_job("welcome", user_id)
    await redis.aclose()


def work(redis_url: str, database_url: str, smtp_port: int) -> None:
    async def startup(ctx: dict[str, Any]) -> None:
        ctx["db"] = await asyncpg.create_pool(database_url, min_size=DB_POOL, max_size=DB_POOL)
        ctx["smtp_port"] = smtp_port

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["db"].close()

    worker = Worker(
        functions=[welcome],
        redis_settings=RedisSettings.from_dsn(redis_url),
        max_jobs=MAX_JOBS,
        on_startup=startup,
        on_shutdown=shutdown,
        burst=True,  # exit once the queue is empty
        handle_signals=False,
    )
    worker.run()


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "enqueue":
        asyncio.run(enqueue(args[0], int(args[1]), int(args[2])))
    elif command == "work":
        work(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
