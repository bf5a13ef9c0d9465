import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Identity, Index, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base

EMAIL_MAX_LENGTH = 320
FULL_NAME_MAX_LENGTH = 200


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        # Uniqueness lives in the database, so two concurrent sign-ups cannot both win.
        Index("uq_users_email_lower", func.lower(text("email")), unique=True),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX_LENGTH))
    full_name: Mapped[str] = mapped_column(String(FULL_NAME_MAX_LENGTH))
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_seen_at: Mapped[datetime | None]
    welcome_email_sent_at: Mapped[datetime | None]
    # Who is sending the welcome email, and until when the claim holds (worker.users.tasks):
    # the row is not locked while the mail server answers.
    welcome_email_claim: Mapped[uuid.UUID | None]
    welcome_email_claimed_until: Mapped[datetime | None]
    deactivated_at: Mapped[datetime | None]
