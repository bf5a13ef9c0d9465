"""Bearer tokens: client tokens (API_TOKENS) for /users, the admin token for everything."""

from __future__ import annotations

import hmac
from enum import IntEnum
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.settings import settings

bearer = HTTPBearer(auto_error=False, description="A client token, or the admin token")


class Role(IntEnum):
    CLIENT = 1
    ADMIN = 2


def _matches(token: bytes, secret: str) -> bool:
    return hmac.compare_digest(token, secret.encode())


def role_of(token: str) -> Role | None:
    """Every configured token is compared, in constant time, whatever matches first."""
    presented = token.encode()
    admin = _matches(presented, settings.admin_token.get_secret_value())
    client = False
    for secret in settings.api_tokens:
        client |= _matches(presented, secret.get_secret_value())
    if admin:
        return Role.ADMIN
    return Role.CLIENT if client else None


async def authenticate(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Role:
    role = role_of(credentials.credentials) if credentials else None
    if role is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return role


async def require_admin(role: Annotated[Role, Depends(authenticate)]) -> Role:
    if role != Role.ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this endpoint needs the admin token")
    return role


AnyToken = Annotated[Role, Depends(authenticate)]
AdminToken = Annotated[Role, Depends(require_admin)]
