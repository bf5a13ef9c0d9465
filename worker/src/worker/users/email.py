"""The welcome email: composed here, sent over SMTP with aiosmtplib."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from html import escape

from shared.settings import settings
from worker.runtime import get_smtp_pool
from worker.smtp import Sender, send_once


def welcome_message(email: str, full_name: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = email
    message["Subject"] = "Welcome aboard"
    message.set_content(f"Hello {full_name},\n\nyour account is ready. Welcome!\n")
    message.add_alternative(
        f"<p>Hello {escape(full_name)},</p><p>your account is ready. Welcome!</p>", subtype="html"
    )
    return message


@asynccontextmanager
async def sender() -> AsyncIterator[Sender]:
    """A way to send one message, ready to use: a slot among the process's pooled sessions, or
    on any other loop (a test's, a task written with `asyncio.run()`) a session of its own.
    Each delivery is bounded by SMTP_TIMEOUT either way."""
    pool = get_smtp_pool()
    if pool is None:
        yield send_once
        return
    async with pool.reserved() as deliver:
        yield deliver


async def send(message: EmailMessage) -> None:
    async with sender() as deliver:
        await deliver(message)
