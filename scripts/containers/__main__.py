"""python -m scripts.containers images | smoke | check

- images:  build both images (`make images`).
- smoke:   build, then run them as production does (`make smoke-images`).
- check:   both, for `make test`: where no engine runs or can be started, say so and pass,
           unless CI=true, where it is required.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from scripts.containers.build import build_images
from scripts.containers.engine import EngineUnavailable, docker_engine, say


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.containers")
    parser.add_argument("command", choices=["images", "smoke", "check"])
    command = parser.parse_args().command
    started = time.monotonic()
    try:
        with docker_engine() as engine:
            images = build_images(engine)
            if command in ("smoke", "check"):
                from scripts.containers.smoke import smoke_test

                smoke_test(engine, images)
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
