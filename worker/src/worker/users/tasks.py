"""Tasks of the users domain."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import (
    DEACTIVATE_INACTIVE_USERS,
    SEND_WELCOME_EMAIL,
    NoArgs,
    SendWelcomeEmailArgs,
)
from shared.models import User
from worker.decorator import task
from worker.users import email

INACTIVE_AFTER = timedelta(days=90)
# Ten thousand ids per UPDATE keeps each batch's row locks well under a second.
DEACTIVATE_BATCH = 10_000


@task(SEND_WELCOME_EMAIL)
async def send_welcome_email(args: SendWelcomeEmailArgs, db: AsyncSession) -> bool:
    """Send the welcome email once; False when there is nothing to send.

    The user's row stays locked from the check to the commit (of the run's transaction, with
    its SUCCEEDED record), so two deliveries of the same run (or two runs for one user) cannot
    both send. A duplicate email is possible only if the worker dies between the SMTP server's
    acceptance and the commit.
    """
    user = await db.scalar(select(User).where(User.id == args.user_id).with_for_update())
    if user is None or user.welcome_email_sent_at is not None:
        return False
    await email.send(email.welcome_message(user.email, user.full_name))
    user.welcome_email_sent_at = datetime.now(UTC)
    await db.flush()
    return True


@task(DEACTIVATE_INACTIVE_USERS, commits_in_batches=True)
async def deactivate_inactive_users(args: NoArgs, db: AsyncSession) -> int:
    """Deactivate active users idle (last seen, else created) for more than INACTIVE_AFTER.

    Set-based UPDATEs over primary-key ranges, each batch committed on its own: no rows are
    loaded into Python, and no batch holds its row locks for long while the API writes. Run
    twice, the second run finds nothing left to deactivate.
    """
    cutoff = datetime.now(UTC) - INACTIVE_AFTER
    lowest, highest = (await db.execute(select(func.min(User.id), func.max(User.id)))).one()
    if lowest is None:
        return 0
    deactivated = 0
    for start in range(lowest, highest + 1, DEACTIVATE_BATCH):
        connection = await db.connection()
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
        await db.commit()
    return deactivated
