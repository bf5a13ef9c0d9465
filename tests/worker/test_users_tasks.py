"""The users tasks' async cores, on a real session that is rolled back after each test."""

import uuid
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from html import escape

import pytest
from aiosmtplib import SMTPNotSupported, SMTPRecipientRefused
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import NoArgs, SendWelcomeEmailArgs
from shared.models import User
from shared.settings import settings
from tests.fixtures.smtp import Mailbox
from tests.fixtures.users import add_user
from worker.errors import ClaimHeld, is_transient
from worker.users.tasks import deactivate_inactive_users, send_welcome_email

HOUR = timedelta(hours=1)


@pytest.fixture
def mail_to(smtp_server: Mailbox, monkeypatch: pytest.MonkeyPatch) -> Mailbox:
    monkeypatch.setattr(settings, "smtp_host", "127.0.0.1")
    monkeypatch.setattr(settings, "smtp_port", smtp_server.port)
    return smtp_server


async def test_welcome_email_is_sent_once_with_text_and_html(
    db: AsyncSession, mail_to: Mailbox
) -> None:
    user = await add_user(db)
    assert await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db) is True
    assert await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db) is False

    [message] = mail_to.to("grace@example.com")
    assert message["From"] == settings.mail_from
    assert [part.get_content_type() for part in message.walk()][1:] == ["text/plain", "text/html"]
    await db.refresh(user)
    assert user.welcome_email_sent_at is not None


@pytest.mark.parametrize("name", ["Ada Lovelace", "Zoë <b>&", "Line\r\nBreak", "&" * 200])
async def test_the_welcome_email_reads_the_same_whatever_the_name(
    db: AsyncSession, mail_to: Mailbox, name: str
) -> None:
    """The message is composed as bytes: any name comes back as it was given, in both parts
    (a name that is not printable ASCII, or escaped past SMTP's line limit, travels in base64)."""
    user = await add_user(db, full_name=name)
    assert await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db) is True
    [received] = mail_to.to("grace@example.com")
    message = message_from_bytes(received.as_bytes(), policy=policy.SMTP)
    assert message.defects == []
    text, html = (part.get_content() for part in message.walk() if not part.is_multipart())
    assert text == f"Hello {name},\n\nyour account is ready. Welcome!\n"
    assert html == f"<p>Hello {escape(name)},</p><p>your account is ready. Welcome!</p>\n"


async def test_a_mail_from_outside_ascii_is_encoded(
    db: AsyncSession, mail_to: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "mail_from", "Équipe <no-reply@example.com>")
    user = await add_user(db)
    assert await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db) is True
    [received] = mail_to.to("grace@example.com")
    message = message_from_bytes(received.as_bytes(), policy=policy.SMTP)
    assert message["From"] == "Équipe <no-reply@example.com>"
    assert message["Subject"] == "Welcome aboard"


async def test_welcome_email_for_an_unknown_user_returns_false(
    db: AsyncSession, mail_to: Mailbox
) -> None:
    assert await send_welcome_email(SendWelcomeEmailArgs(user_id=987654), db) is False
    assert mail_to.messages == []


async def test_an_unreachable_mail_server_is_an_error_and_nothing_is_marked(
    db: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "smtp_port", 9)  # discard port: nothing listens
    user = await add_user(db)
    with pytest.raises(OSError, match="connect"):
        await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db)
    await db.refresh(user)
    assert user.welcome_email_sent_at is None


async def test_a_unicode_domain_stored_before_idna_is_mailed_in_its_idna_form(
    db: AsyncSession, mail_to: Mailbox
) -> None:
    """A row written before domains were stored as IDNA: its run, retried, now succeeds on a
    server without SMTPUTF8 (the one the failure came from)."""
    user = await add_user(db, "zoe@exämple.com")
    assert await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db) is True
    [message] = mail_to.to("zoe@xn--exmple-cua.com")
    assert message["Subject"] == "Welcome aboard"


async def test_a_non_ascii_local_part_is_sent_with_smtputf8(
    db: AsyncSession, smtputf8_server: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "smtp_host", "127.0.0.1")
    monkeypatch.setattr(settings, "smtp_port", smtputf8_server.port)
    user = await add_user(db, "zoë@xn--exmple-cua.com")
    assert await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db) is True
    [message] = smtputf8_server.wait_for(1)
    # Parsed again as UTF-8 headers (the fixture's parser keeps the raw bytes escaped).
    reparsed = message_from_bytes(message.as_bytes(), policy=policy.SMTPUTF8)
    assert reparsed["To"] == "zoë@xn--exmple-cua.com"


async def test_a_non_ascii_local_part_fails_on_a_server_without_smtputf8(
    db: AsyncSession, mail_to: Mailbox
) -> None:
    """What SMTP_UTF8=true against such a server leads to: the run fails, nothing is marked."""
    user = await add_user(db, "zoë@example.com")
    with pytest.raises(SMTPNotSupported, match="SMTPUTF8"):
        await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db)
    assert mail_to.messages == []
    await db.refresh(user)
    assert user.welcome_email_sent_at is None


async def test_deactivates_users_idle_for_90_days_across_batches(db: AsyncSession) -> None:
    now = datetime.now(UTC)
    long_ago, recently = now - timedelta(days=91), now - timedelta(days=89)
    # Ids far apart, so the work spans several primary-key batches.
    rows = [
        (1, "old-seen@example.com", long_ago, recently, True),  # created long ago, seen lately
        (15_000, "idle@example.com", long_ago, long_ago, True),
        (31_000, "never-seen-old@example.com", long_ago, None, True),
        (45_000, "new@example.com", recently, None, True),
        (60_000, "gone@example.com", long_ago, None, False),  # already inactive
    ]
    for user_id, email, created_at, last_seen_at, active in rows:
        await db.execute(
            text(
                "INSERT INTO users (id, email, full_name, created_at, last_seen_at, is_active) "
                "OVERRIDING SYSTEM VALUE VALUES (:id, :email, 'x', :created, :seen, :active)"
            ),
            {"id": user_id, "email": email, "created": created_at, "seen": last_seen_at,
             "active": active},
        )  # fmt: skip
    assert await deactivate_inactive_users(NoArgs(), db) == 2
    assert await deactivate_inactive_users(NoArgs(), db) == 0

    users = {u.email: u for u in (await db.scalars(select(User))).all()}
    assert not users["idle@example.com"].is_active
    assert users["idle@example.com"].deactivated_at is not None
    assert not users["never-seen-old@example.com"].is_active
    assert users["old-seen@example.com"].is_active
    assert users["new@example.com"].is_active
    assert users["gone@example.com"].deactivated_at is None


async def test_deactivating_nobody_returns_zero(db: AsyncSession) -> None:
    assert await deactivate_inactive_users(NoArgs(), db) == 0


async def test_a_claimed_welcome_email_is_left_to_its_claimant_until_the_claim_expires(
    db: AsyncSession, mail_to: Mailbox
) -> None:
    """Another run is sending it (its claim holds): this one retries later and sends nothing.
    Once that claim expired (its holder died), this run takes the user over and sends."""
    user = await add_user(db)
    await db.execute(
        update(User)
        .where(User.id == user.id)
        .values(welcome_email_claim=uuid.uuid4(), welcome_email_claimed_until=func.now() + HOUR)
    )
    with pytest.raises(ClaimHeld):
        await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db)
    assert mail_to.messages == []

    await db.execute(
        update(User).where(User.id == user.id).values(welcome_email_claimed_until=func.now() - HOUR)
    )
    assert await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db) is True
    assert len(mail_to.to("grace@example.com")) == 1
    await db.refresh(user)
    assert user.welcome_email_claim is None
    assert user.welcome_email_sent_at is not None


async def test_a_failed_send_releases_its_claim(
    db: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "smtp_port", 9)  # nothing listens
    user = await add_user(db)
    with pytest.raises(OSError, match="connect"):
        await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db)
    await db.refresh(user)
    assert (user.welcome_email_claim, user.welcome_email_claimed_until) == (None, None)


@pytest.mark.parametrize(
    ("reply", "retried"), [("450 4.2.1 Mailbox busy", True), ("550 5.1.1 No such user", False)]
)
async def test_a_refused_recipient_fails_the_send_and_only_a_4xx_is_retried(
    db: AsyncSession, mail_to: Mailbox, reply: str, retried: bool
) -> None:
    user = await add_user(db)
    mail_to.refusals[user.email] = reply
    with pytest.raises(SMTPRecipientRefused) as refused:
        await send_welcome_email(SendWelcomeEmailArgs(user_id=user.id), db)
    assert is_transient(refused.value) is retried
    assert mail_to.messages == []
    await db.refresh(user)
    assert (user.welcome_email_sent_at, user.welcome_email_claim) == (None, None)
