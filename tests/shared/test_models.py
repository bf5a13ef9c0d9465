import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import User


async def test_email_is_unique_whatever_its_case(db: AsyncSession) -> None:
    db.add(User(email="ada@example.com", full_name="Ada"))
    await db.commit()
    db.add(User(email="ADA@Example.COM", full_name="Other Ada"))
    with pytest.raises(IntegrityError, match="uq_users_email_lower"):
        await db.commit()
