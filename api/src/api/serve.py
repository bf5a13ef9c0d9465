"""The api image's command: uvicorn on `API_BIND_ADDRESS`:`API_PORT`.

An exec-form `CMD` expands no variables, so a port written into the image's command line would
ignore the `API_PORT` setting (and the probes would have to repeat the number). Reading both
from the one settings object keeps the image, compose and the manifests in step.
"""

from __future__ import annotations

import uvicorn

from shared.settings import settings


def main() -> None:
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=settings.api_bind_address,
        port=settings.api_port,
        # The platform's proxy (or none) is in front; uvicorn's own access log would repeat
        # what RequestIdMiddleware already logs with the request id.
        access_log=False,
    )


if __name__ == "__main__":
    main()
