"""`python -m api.probe [healthz|readyz]`: exit 0 when this container's api answers 200.

For container healthchecks (compose) and checks run inside the container: it asks the port and
address the api itself listens on (`API_PORT`, `API_BIND_ADDRESS`), so a changed port needs no
second edit, and on a shared host network it reaches this api, not another one.
"""

from __future__ import annotations

import sys
import urllib.request

from shared.settings import settings

TIMEOUT_SECONDS = 3.0
ALL_INTERFACES = {"0.0.0.0", "::", ""}  # noqa: S104 - compared against, not bound


def probe_url(path: str) -> str:
    address = settings.api_bind_address
    host = "127.0.0.1" if address in ALL_INTERFACES else address
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}/{path}"


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "readyz"
    if path not in ("healthz", "readyz"):
        print(f"usage: python -m api.probe [healthz|readyz], not {path!r}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(probe_url(path), timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 - our own http URL
            status: int = response.status
    except OSError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
