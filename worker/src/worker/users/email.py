"""The welcome email: composed here, sent over SMTP with aiosmtplib."""

from email.message import EmailMessage
from html import escape

import aiosmtplib

from shared.settings import settings


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


async def send(message: EmailMessage) -> None:
    password = settings.smtp_password.get_secret_value()
    await aiosmtplib.send(
        message,
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username or None,
        password=password or None,
        start_tls=settings.smtp_starttls,
        timeout=settings.smtp_timeout,
    )
