"""SMTP sessions kept open and reused, a bounded number per worker process.

A new connection per message costs a TCP handshake, the server's greeting, EHLO, and with
STARTTLS and a login several more round trips: against a provider 100 ms away that is most of
the time a message takes. A session that delivered a message is put back and sends the next
one; a session that failed in any way is closed and replaced by a new one on next use, since
its state is unknown. Every exchange, connecting included, is bounded by SMTP_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiosmtplib

from shared.settings import settings


@dataclass(frozen=True)
class Mail:
    """A message as it goes on the wire, with its envelope. Composed as bytes by its sender
    (worker.users.email): an `EmailMessage` built and flattened per message cost more CPU than
    the rest of a run's Python work together."""

    sender: str
    recipients: tuple[str, ...]
    content: bytes


Sender = Callable[[Mail], Awaitable[None]]


async def transmit(client: aiosmtplib.SMTP, mail: Mail) -> None:
    """MAIL, RCPT and DATA on an open session.

    An address outside ASCII needs SMTPUTF8: aiosmtplib's `sendmail` checks that the server
    offers it (else SMTPNotSupported). An ASCII envelope, nearly every one, is sent command by
    command: `sendmail` would parse each address twice more and measure the message for SIZE,
    a fifth of the CPU the exchange costs the worker. A refused recipient then raises
    SMTPRecipientRefused, whose code says whether to retry (4xx) or not (5xx). A session whose
    exchange failed is not reused (SmtpPool), so no RSET is needed after a refusal."""
    if not (mail.sender + "".join(mail.recipients)).isascii():
        await client.sendmail(mail.sender, mail.recipients, mail.content, mail_options=["SMTPUTF8"])
        return
    await client.mail(mail.sender)
    for recipient in mail.recipients:
        await client.rcpt(recipient)
    await client.data(mail.content)


async def connect() -> aiosmtplib.SMTP:
    """A new session: connected, upgraded to TLS and logged in as the settings say."""
    password = settings.smtp_password.get_secret_value()
    client = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username or None,
        password=password or None,
        start_tls=settings.smtp_starttls,
        # No timer per command: every use of a session is bounded as a whole by its caller
        # (SMTP_TIMEOUT, connecting included), and aiosmtplib's own timeout wraps each reply
        # in `asyncio.wait_for`, a timer and a future more per reply, four replies a message.
        timeout=None,
    )
    await client.connect()
    return client


async def send_once(mail: Mail) -> None:
    """One message over a session of its own (no pool: a loop that is about to end)."""
    async with asyncio.timeout(settings.smtp_timeout):
        client = await connect()
        try:
            await transmit(client, mail)
        finally:
            with contextlib.suppress(Exception):
                await client.quit()


class SmtpPool:
    """At most `size` sessions at once; a sender waits for a free one (bounded by the caller's
    own time limit, not here: waiting for a session is not an error)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aiosmtplib.SMTP] = []
        self._open: set[aiosmtplib.SMTP] = set()
        self.sessions_opened = 0
        self.messages_sent = 0

    def _reusable(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            self._discard(client)  # the server closed it while it was idle
        return None

    def _discard(self, client: aiosmtplib.SMTP) -> None:
        self._open.discard(client)
        client.close()

    @contextlib.asynccontextmanager
    async def reserved(self) -> AsyncIterator[Sender]:
        """Wait for a free session slot and hold it: the sender it yields delivers without
        waiting again (the welcome email claims its user only once it can send)."""
        async with self._slots:
            yield self._deliver

    async def send(self, mail: Mail) -> None:
        async with self.reserved() as deliver:
            await deliver(mail)

    async def _deliver(self, mail: Mail) -> None:
        """Over an idle session, else a new one; within SMTP_TIMEOUT, connecting included."""
        client = self._reusable()
        try:
            async with asyncio.timeout(settings.smtp_timeout):
                if client is None:
                    client = await connect()
                    self._open.add(client)
                    self.sessions_opened += 1
                await transmit(client, mail)
        except BaseException:
            if client is not None:
                self._discard(client)
            raise
        self._idle.append(client)
        self.messages_sent += 1

    async def close(self) -> None:
        for client in list(self._open):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.quit(), timeout=1)
            client.close()
        self._open.clear()
        self._idle.clear()
