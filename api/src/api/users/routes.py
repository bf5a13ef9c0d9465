from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from api.auth import AnyToken
from api.deps import AppResources, DbSession
from api.errors import error_responses
from api.middleware import current_request_id
from api.pagination import Cursor, InvalidCursor, Limit, decode_cursor, encode_cursor
from api.users.schemas import UserCreatedOut, UserCreateIn, UserOut, UserPage, UserUpdateIn
from shared.contracts import BIGINT_MAX
from shared.users import service

router = APIRouter(prefix="/users", tags=["users"])

# Ids are PostgreSQL bigints: anything outside is a 422, never a database error.
UserId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 409, 413, 415, 422),
)
async def create_user(
    body: UserCreateIn, db: DbSession, resources: AppResources, _: AnyToken, response: Response
) -> UserCreatedOut:
    """Create a user; a welcome email is sent in the background (see `welcome_run_id`)."""
    user, welcome = await service.create_user(
        db, email=body.email, full_name=body.full_name, request_id=current_request_id()
    )
    response.headers["Location"] = f"/users/{user.id}"
    return UserCreatedOut(**UserOut.model_validate(user).model_dump(), welcome_run_id=welcome.id)


@router.get("", responses=error_responses(401, 422))
async def list_users(
    db: DbSession,
    _: AnyToken,
    is_active: Annotated[bool | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> UserPage:
    """Users in id order, a page at a time."""
    after_id = _user_cursor(cursor) if cursor else None
    users = await service.list_users(db, is_active=is_active, after_id=after_id, limit=limit)
    next_cursor = encode_cursor(users[-1].id) if len(users) == limit else None
    return UserPage(items=[UserOut.model_validate(u) for u in users], next_cursor=next_cursor)


def _user_cursor(cursor: str) -> int:
    key = decode_cursor(cursor)
    if len(key) != 1 or not isinstance(key[0], int) or isinstance(key[0], bool):
        raise InvalidCursor
    if not 0 <= key[0] <= BIGINT_MAX:  # beyond a bigint, asyncpg refuses the parameter: a 500
        raise InvalidCursor
    return key[0]


@router.get("/{user_id}", responses=error_responses(401, 404, 422))
async def read_user(user_id: UserId, db: DbSession, _: AnyToken) -> UserOut:
    return UserOut.model_validate(await service.get_user(db, user_id))


@router.patch("/{user_id}", responses=error_responses(401, 404, 413, 415, 422))
async def update_user(user_id: UserId, body: UserUpdateIn, db: DbSession, _: AnyToken) -> UserOut:
    """Change the name or (de)activate; fields left out stay as they are."""
    return UserOut.model_validate(await service.update_user(db, user_id, body.to_change()))


@router.delete(
    "/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 404, 422)
)
async def delete_user(user_id: UserId, db: DbSession, _: AnyToken) -> None:
    """Delete the user for good; its task runs stay in the log."""
    await service.delete_user(db, user_id)


@router.post(
    "/{user_id}/activity",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 422),
)
async def record_activity(user_id: UserId, db: DbSession, _: AnyToken) -> None:
    """Record that the user was seen now (it keeps them from being deactivated)."""
    await service.record_activity(db, user_id)
