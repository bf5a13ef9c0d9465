"""python -m scripts.containers images | smoke | compose | check

- images:  build both images (`make images`).
- smoke:   build, then run them as production does (`make smoke-images`).
- compose: build, then `docker compose up` the stack with the host-network override.
- check:   all three, for `make test`: where no engine runs or can be started, say so and pass,
           unless CI=true, where it is required.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import ExitStack

from scripts.containers.build import build_images
from scripts.containers.compose import StandinBuild, compose_check
from scripts.containers.engine import EngineUnavailable, docker_engine, say
from scripts.containers.smoke import smoke_test


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.containers")
    parser.add_argument("command", choices=["images", "smoke", "compose", "check"])
    command = parser.parse_args().command
    # A SIGTERM (a CI timeout, a kill) unwinds like Ctrl-C, so every clean-up below still runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    try:
        with docker_engine() as engine, ExitStack() as stack:
            images = build_images(engine)
            standins = None
            if command in ("compose", "check"):
                standins = StandinBuild(engine, images)
                stack.callback(standins.stop)
            if command in ("smoke", "check"):
                smoke_test(engine, images)
            if standins is not None:
                compose_check(engine, standins)
    except EngineUnavailable as error:
        required = os.environ.get("CI", "").lower() == "true"
        say(f"NOT RUN: the container checks need a Docker engine: {error}")
        if required:
            say("CI=true: the container checks are required")
            return 1
        return 0
    say(f"{command} passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
