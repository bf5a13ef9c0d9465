"""Tasks of the users domain."""

from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import (
    DEACTIVATE_INACTIVE_USERS,
    SEND_WELCOME_EMAIL,
    NoArgs,
    SendWelcomeEmailArgs,
)
from shared.models import User
from shared.settings import settings
from shared.users.addresses import smtp_address
from worker.celery_app import app, db_or_task_session
from worker.recording import run_recorded
from worker.users import email

INACTIVE_AFTER = timedelta(days=90)
# Ten thousand ids per UPDATE keeps each batch's row locks well under a second.
DEACTIVATE_BATCH = 10_000


@app.task(name=SEND_WELCOME_EMAIL.name, bind=True, max_retries=settings.task_max_retries)
def send_welcome_email(self: Task[Any, Any], /, **kwargs: object) -> bool:
    return run_recorded(self, SEND_WELCOME_EMAIL, send_welcome_email_core, kwargs)


async def send_welcome_email_core(
    args: SendWelcomeEmailArgs, db: AsyncSession | None = None
) -> bool:
    """Send the welcome email once; False when there is nothing to send.

    The user's row stays locked from the check to the commit, so two deliveries of the same
    run (or two runs for one user) cannot both send. A duplicate email is possible only if the
    worker dies between the SMTP server's acceptance and the commit.
    """
    async with db_or_task_session(db) as session:
        user = await session.scalar(select(User).where(User.id == args.user_id).with_for_update())
        if user is None or user.welcome_email_sent_at is not None:
            return False
        await email.send(email.welcome_message(smtp_address(user.email), user.full_name))
        user.welcome_email_sent_at = datetime.now(UTC)
        await session.flush()
        return True


@app.task(name=DEACTIVATE_INACTIVE_USERS.name, bind=True, max_retries=settings.task_max_retries)
def deactivate_inactive_users(self: Task[Any, Any], /, **kwargs: object) -> int:
    return run_recorded(self, DEACTIVATE_INACTIVE_USERS, deactivate_inactive_users_core, kwargs)


async def deactivate_inactive_users_core(args: NoArgs, db: AsyncSession | None = None) -> int:
    """Deactivate active users idle (last seen, else created) for more than INACTIVE_AFTER.

    Set-based UPDATEs over primary-key ranges, committed one batch at a time: no rows are
    loaded into Python, and no batch holds its row locks for long while the API writes.
    """
    cutoff = datetime.now(UTC) - INACTIVE_AFTER
    async with db_or_task_session(db) as session:
        lowest, highest = (
            await session.execute(select(func.min(User.id), func.max(User.id)))
        ).one()
        if lowest is None:
            return 0
        connection = await session.connection()
        deactivated = 0
        for start in range(lowest, highest + 1, DEACTIVATE_BATCH):
            result = await connection.execute(
                update(User)
                .where(
                    User.id >= start,
                    User.id < start + DEACTIVATE_BATCH,
                    User.is_active,
                    func.coalesce(User.last_seen_at, User.created_at) < cutoff,
                )
                .values(is_active=False, deactivated_at=func.now())
            )
            deactivated += result.rowcount
            await session.commit()
            connection = await session.connection()
        return deactivated
