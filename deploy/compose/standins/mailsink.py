"""A stand-in for Mailpit: accepts SMTP and lists what it received over HTTP.

Only what compose.yaml's stack uses: SMTP without authentication or TLS on SMTP_PORT, and the
message list at `GET /api/v1/messages` on UI_PORT in Mailpit's shape (`total`, and `To` and
`Subject` of each message). Messages are kept in memory. `mailsink.py --check` is its
healthcheck: it asks this sink's own HTTP port.

Standard library only: the stand-in image has Debian's python3 and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import urllib.request
from email import message_from_bytes
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Not our application: no shared.settings here, just its own three variables.
HOST = os.environ.get("SINK_HOST", "127.0.0.1")  # noqa: TID251
SMTP_PORT = int(os.environ.get("SMTP_PORT", "1025"))  # noqa: TID251
UI_PORT = int(os.environ.get("UI_PORT", "8025"))  # noqa: TID251
MESSAGES: list[dict[str, object]] = []
LOCK = threading.Lock()


def keep(data: bytes) -> None:
    message = message_from_bytes(data)
    recipients = [
        {"Name": name, "Address": address}
        for name, address in getaddresses(message.get_all("To", []))
    ]
    with LOCK:
        MESSAGES.append({"To": recipients, "Subject": message.get("Subject", "")})


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def reply(line: str) -> None:
        writer.write(f"{line}\r\n".encode())
        await writer.drain()

    await reply("220 mailsink ready")
    while line := await reader.readline():
        verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
        if verb == "EHLO":
            await reply("250-mailsink")
            await reply("250 8BITMIME")
        elif verb in ("HELO", "MAIL", "RCPT", "RSET", "NOOP"):
            await reply("250 OK")
        elif verb == "DATA":
            await reply("354 End data with <CR><LF>.<CR><LF>")
            lines: list[bytes] = []
            while (chunk := await reader.readline()) not in (b".\r\n", b".\n", b""):
                lines.append(chunk[1:] if chunk.startswith(b"..") else chunk)
            keep(b"".join(lines))
            await reply("250 OK: queued")
        elif verb == "QUIT":
            await reply("221 Bye")
            break
        else:
            await reply("502 Command not implemented")
    writer.close()


class Messages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/api/v1/messages", "/readyz"):
            self.send_error(404)
            return
        with LOCK:
            body = json.dumps({"total": len(MESSAGES), "messages": list(MESSAGES)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, message_format: str, *args: object) -> None:
        pass  # quiet: the healthcheck asks every two seconds


def check() -> int:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{UI_PORT}/readyz", timeout=3):
            return 0
    except OSError:
        return 1


async def serve() -> None:
    http = ThreadingHTTPServer((HOST, UI_PORT), Messages)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    server = await asyncio.start_server(session, HOST, SMTP_PORT)
    print(f"mailsink: SMTP on {HOST}:{SMTP_PORT}, messages on {HOST}:{UI_PORT}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(check())
    # As PID 1 of its container, SIGTERM would be ignored without a handler of its own.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
