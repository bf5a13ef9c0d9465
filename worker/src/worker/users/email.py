"""The welcome email: composed here, sent over SMTP with aiosmtplib.

The message is written as bytes from a fixed MIME layout (multipart/alternative: text, then
HTML). Building an `EmailMessage` and flattening it cost ~1.5 ms of CPU per message, a tenth of
what the worker spent on a whole run; this costs a few microseconds. What the email package is
needed for (encoding a MAIL_FROM display name that is not ASCII) it does once per value.
"""

import base64
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email import policy
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from functools import cache
from html import escape

from shared.settings import settings
from worker.runtime import get_smtp_pool
from worker.smtp import Mail, Sender, send_once

SUBJECT = "Welcome aboard"
# A text part is sent as it is (7bit) when it is printable ASCII in lines SMTP accepts
# (RFC 5321: 998 octets); anything else is sent in base64, which every server takes.
_SEVEN_BIT = re.compile(r"[\t\n\x20-\x7e]*")
_LINE_LIMIT = 998


def welcome_message(email: str, full_name: str) -> Mail:
    if "\r" in email or "\n" in email:
        raise ValueError("an address may not contain a line break")
    sender, headers = _shared_headers(settings.mail_from)
    # Unguessable, so that no name can close a part early; without a UUID object per message.
    boundary = f"==============={os.urandom(16).hex()}=="
    content = b"".join(
        (
            headers,
            f"To: {email}\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'
            f"\r\n--{boundary}\r\n".encode(),
            _text_part("plain", f"Hello {full_name},\n\nyour account is ready. Welcome!\n"),
            f"\r\n--{boundary}\r\n".encode(),
            _text_part(
                "html",
                f"<p>Hello {escape(full_name)},</p><p>your account is ready. Welcome!</p>\n",
            ),
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    return Mail(sender, (email,), content)


@cache
def _shared_headers(mail_from: str) -> tuple[str, bytes]:
    """The envelope sender and the From and Subject headers, rendered by the email package
    (RFC 2047 for a display name outside ASCII) once per MAIL_FROM."""
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = mail_from
    message["Subject"] = SUBJECT
    sender = message["From"]
    assert isinstance(sender, AddressHeader)
    rendered = message.as_bytes()
    return sender.addresses[0].addr_spec, rendered[: -len(b"\r\n")]  # without the blank line


def _text_part(subtype: str, text: str) -> bytes:
    """One part, its body ending with a line break (as the email package writes it)."""
    if _SEVEN_BIT.fullmatch(text) and max(map(len, text.split("\n"))) <= _LINE_LIMIT:
        encoding, body = "7bit", text.replace("\n", "\r\n").encode()
    else:
        encoding = "base64"
        body = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode()
        + body
    )


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


async def send(mail: Mail) -> None:
    async with sender() as deliver:
        await deliver(mail)
