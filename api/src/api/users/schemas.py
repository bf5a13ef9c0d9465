from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from api.text import Printable, Trimmed
from shared.models.users import FULL_NAME_MAX_LENGTH
from shared.users.service import UserChange

# The limits sit on the string itself, inside the validators (Trimmed still runs first): after
# a validator they become a generic check whose error reads "too_long ... at most 200 items".
FullName = Annotated[
    str, StringConstraints(min_length=1, max_length=FULL_NAME_MAX_LENGTH), Trimmed, Printable
]
# Trimmed, then checked and normalized by email-validator (no DNS lookups). Uniqueness ignores
# case: the database has a unique index on lower(email).
Email = Annotated[EmailStr, Trimmed]


class UserCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email
    full_name: FullName


class UserUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full_name: FullName | None = None
    is_active: bool | None = None

    def to_change(self) -> UserChange:
        return UserChange(full_name=self.full_name, is_active=self.is_active)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    full_name: str
    is_active: bool
    created_at: datetime
    last_seen_at: datetime | None
    welcome_email_sent_at: datetime | None
    deactivated_at: datetime | None


class UserCreatedOut(UserOut):
    welcome_run_id: uuid.UUID = Field(description="The run that sends the welcome email")


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None
