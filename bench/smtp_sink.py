"""The benchmark's mail server: accepts every message after `--delay` seconds, as a remote
provider would, and writes one line per session (`S <time>`) and per message
(`M <time> <recipient>`) to stdout, so the benchmark can count both per phase.

    python -m bench.smtp_sink --port P --delay 0.1

Standard library and aiosmtpd only: the arq reference uses the same sink from another
environment.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class Sink:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        with self.lock:
            sys.stdout.write(line + "\n")

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        session.host_name = hostname
        self.write(f"S {time.time():.6f}")
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.delay)
        self.write(f"M {time.time():.6f} {envelope.rcpt_tos[0]}")
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args()
    controller = Controller(Sink(args.delay), hostname="127.0.0.1", port=args.port)
    controller.start()
    print("sink ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        sys.stdout.flush()
    controller.stop()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
