"""welcome email claim

The welcome email is no longer sent under a row lock: a worker claims the user row (who, until
when) in a short transaction, sends with no transaction open, and stamps the row only if its
claim still holds. Nullable columns with no default: adding them rewrites nothing, and a worker
of the previous release ignores them (expand; nothing to contract).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("welcome_email_claim", sa.Uuid(), nullable=True))
    op.add_column(
        "users",
        sa.Column("welcome_email_claimed_until", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("users", "welcome_email_claimed_until")
    op.drop_column("users", "welcome_email_claim")
