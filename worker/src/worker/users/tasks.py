"""Tasks of the users domain."""

import contextlib
import logging
import math
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Interval, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import (
    DEACTIVATE_INACTIVE_USERS,
    SEND_WELCOME_EMAIL,
    NoArgs,
    SendWelcomeEmailArgs,
)
from shared.db import autocommit_statement
from shared.models import User
from shared.settings import settings
from shared.users.addresses import smtp_address
from worker import driver
from worker.decorator import task
from worker.errors import ClaimHeld
from worker.recording import write_with_success
from worker.users import email

log = logging.getLogger("worker.tasks")

_NOW = func.now()
INACTIVE_AFTER = timedelta(days=90)
# Ten thousand ids per UPDATE keeps each batch's row locks well under a second.
DEACTIVATE_BATCH = 10_000


# A claim outlives the longest send (SMTP_TIMEOUT) by this much: a run that claimed and died
# holds the user back for at most SMTP_TIMEOUT + CLAIM_MARGIN.
CLAIM_MARGIN = timedelta(seconds=5)

_CLAIM = (
    update(User)
    .where(
        User.id == bindparam("user_id"),
        User.welcome_email_sent_at.is_(None),
        or_(User.welcome_email_claimed_until.is_(None), User.welcome_email_claimed_until < _NOW),
    )
    .values(
        welcome_email_claim=bindparam("claim"),
        welcome_email_claimed_until=_NOW + bindparam("hold", type_=Interval),
    )
    .returning(User.email, User.full_name)
)
_SENT_OR_CLAIMED = select(
    User.welcome_email_sent_at,
    func.extract("epoch", User.welcome_email_claimed_until - _NOW).label("claim_left"),
).where(User.id == bindparam("user_id"))
_RELEASE = (
    update(User)
    .where(User.id == bindparam("user_id"), User.welcome_email_claim == bindparam("claim"))
    .values(welcome_email_claim=None, welcome_email_claimed_until=None)
)
# The fence: only the holder of the claim stamps.
_STAMP = (
    update(User)
    .where(User.id == bindparam("user_id"), User.welcome_email_claim == bindparam("claim"))
    .values(welcome_email_sent_at=_NOW, welcome_email_claim=None, welcome_email_claimed_until=None)
)


# commits: the claim commits before the send, so no connection is held while the mail server
# answers; the stamp commits with SUCCEEDED, in the statement that records it.
@task(SEND_WELCOME_EMAIL, commits=True)
async def send_welcome_email(args: SendWelcomeEmailArgs, db: AsyncSession) -> bool:
    """Send the welcome email once; False when there is nothing to send.

    No transaction stays open while the mail server answers: the run claims the user row (one
    autocommit statement), sends, then hands the stamp to the runtime, which writes it in the
    statement that records SUCCEEDED. Another run (or another delivery of this one) finds the
    claim and retries later; a claim whose holder died expires after SMTP_TIMEOUT +
    CLAIM_MARGIN. A duplicate email is possible only if the worker dies between the SMTP
    server's acceptance and the commit of the stamp.
    """
    claim = uuid.uuid4()
    params = {"user_id": args.user_id, "claim": claim}
    hold = timedelta(seconds=settings.smtp_timeout) + CLAIM_MARGIN
    async with email.sender() as deliver:
        # The SMTP slot is ours before the claim starts counting: the claim covers the send only.
        await autocommit_statement(db)
        connection = await db.connection()  # Core, not the ORM: no session state to synchronize
        claimed = await driver.fetch(connection, _CLAIM, {**params, "hold": hold})
        await db.commit()  # the connection goes back to the pool until the stamp
        if not claimed:
            user = (await db.execute(_SENT_OR_CLAIMED, params)).one_or_none()
            if user is not None and user.welcome_email_sent_at is None:
                raise ClaimHeld(
                    "another run is sending this user's welcome email",
                    retry_after=math.ceil(max(0, user.claim_left or 0)) + 1,
                )
            return False  # no such user, or its welcome email went out
        [recipient] = claimed
        try:
            mail = email.welcome_message(smtp_address(recipient["email"]), recipient["full_name"])
            await deliver(mail)
        except BaseException:
            with contextlib.suppress(Exception):
                await db.rollback()
                await db.execute(_RELEASE, params)
                await db.commit()
            raise
        # Unfenced: the email went out even if this attempt was superseded (a duplicate
        # delivery claimed the run meanwhile); the stamp, fenced by the user's claim, records
        # it, so the other attempt finds it sent instead of mailing again.
        await write_with_success(
            db, _STAMP, params, fenced=False,
            unmatched="welcome email sent after its claim expired and was taken over",
        )  # fmt: skip
        return True


@task(DEACTIVATE_INACTIVE_USERS, commits=True)
async def deactivate_inactive_users(args: NoArgs, db: AsyncSession) -> int:
    """Deactivate active users idle (last seen, else created) for more than INACTIVE_AFTER.

    Set-based UPDATEs over primary-key ranges, each batch committed on its own (hence
    `commits=True`): no rows are loaded into Python, and no batch holds its row locks for long
    while the API writes. Run again after a crash, it finds only what is left to deactivate.
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
