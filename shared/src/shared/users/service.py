"""Users: the writes the API makes, each in one transaction that the service commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from shared.contracts import SEND_WELCOME_EMAIL
from shared.db import autocommit_statement
from shared.models import TaskRun, User
from shared.runs.enqueue import insert_run, publish_after_commit, validate_args
from shared.runs.outbox import new_run
from shared.users.errors import EmailTaken, UserNotFound

EMAIL_UNIQUE_INDEX = "uq_users_email_lower"


@dataclass(frozen=True)
class UserChange:
    full_name: str | None = None
    is_active: bool | None = None


# Both rows in one statement: the run needs the user's id, and asking for it first (a flush)
# would cost a round trip while the request holds a pooled connection, which under load is
# what the tail latency of sign-ups is made of. The run's INSERT is built from the contract.
_NEW_USER = (
    insert(User)
    .values(email=bindparam("email"), full_name=bindparam("full_name"))
    .returning(*User.__table__.columns)
    .cte("new_user")
)
_WELCOME = insert_run(SEND_WELCOME_EMAIL, _NEW_USER, user_id=_NEW_USER.c.id).cte("welcome")
_CREATE_WITH_WELCOME = select(aliased(User, _NEW_USER)).add_cte(_WELCOME)


async def create_user(
    db: AsyncSession, *, email: str, full_name: str, request_id: str | None
) -> tuple[User, TaskRun]:
    """The user and its welcome-email run, committed together (the outbox); the run is
    published after the commit."""
    run_id = uuid.uuid4()
    params = {"email": email, "full_name": full_name, "run_id": run_id, "request_id": request_id}
    try:
        # One statement writes both rows, atomic on its own: in autocommit it needs no BEGIN
        # and no COMMIT round trip, which would hold the pooled connection longer. The run's
        # arguments are the new id, which fits them whatever it is; checked all the same.
        await autocommit_statement(db)
        user = (await db.scalars(_CREATE_WITH_WELCOME, params)).one()
        args = validate_args(SEND_WELCOME_EMAIL, {"user_id": user.id})
        welcome = new_run(SEND_WELCOME_EMAIL, args, request_id=request_id, id=run_id)
        publish_after_commit(db, welcome)
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        if EMAIL_UNIQUE_INDEX in str(exc.orig):
            raise EmailTaken from None
        raise
    return user, welcome


async def get_user(db: AsyncSession, user_id: int) -> User:
    user = await db.get(User, user_id)
    if user is None:
        raise UserNotFound(user_id)
    return user


async def list_users(
    db: AsyncSession, *, is_active: bool | None, after_id: int | None, limit: int
) -> list[User]:
    """A page in id order; `after_id` is the keyset cursor (the last id of the previous page)."""
    query = select(User).order_by(User.id).limit(limit)
    if is_active is not None:
        query = query.where(User.is_active == is_active)
    if after_id is not None:
        query = query.where(User.id > after_id)
    return list((await db.scalars(query)).all())


async def update_user(db: AsyncSession, user_id: int, change: UserChange) -> User:
    user = await get_user(db, user_id)
    if change.full_name is not None:
        user.full_name = change.full_name
    if change.is_active is not None and change.is_active != user.is_active:
        user.is_active = change.is_active
        user.deactivated_at = None if change.is_active else func.now()
    await db.commit()
    await db.refresh(user)
    return user


async def delete_user(db: AsyncSession, user_id: int) -> None:
    """A hard delete; the user's task runs stay in the log."""
    deleted = await db.execute(delete(User).where(User.id == user_id).returning(User.id))
    if deleted.scalar_one_or_none() is None:
        await db.rollback()
        raise UserNotFound(user_id)
    await db.commit()


async def record_activity(db: AsyncSession, user_id: int) -> None:
    touched = await db.execute(
        update(User).where(User.id == user_id).values(last_seen_at=func.now()).returning(User.id)
    )
    if touched.scalar_one_or_none() is None:
        await db.rollback()
        raise UserNotFound(user_id)
    await db.commit()
