"""`make images`: both application images, tagged backend-api:dev and backend-worker:dev."""

from __future__ import annotations

import time
from dataclasses import dataclass

from scripts.containers.engine import Engine, say
from scripts.containers.standins import REPO, BaseImages, base_images

TAG = "dev"
MEMBERS = ("api", "worker")


@dataclass(frozen=True)
class Images:
    api: str
    worker: str
    base: BaseImages


def image_name(member: str) -> str:
    return f"backend-{member}:{TAG}"


def build_images(engine: Engine) -> Images:
    base = base_images(engine)
    for member in MEMBERS:
        started = time.monotonic()
        say(f"building {image_name(member)} on {base.python}")
        engine.stream(
            "build",
            "--network", "host",  # the engine has no bridge
            "--file", str(REPO / "deploy" / "docker" / f"{member}.Dockerfile"),
            *base.build_args(),
            "--tag", image_name(member),
            str(REPO),
        )  # fmt: skip
        say(f"built {image_name(member)} in {time.monotonic() - started:.1f} s")
    print_sizes(engine, [image_name(member) for member in MEMBERS])
    return Images(image_name("api"), image_name("worker"), base)


def print_sizes(engine: Engine, references: list[str]) -> None:
    for reference in references:
        size = int(engine.output("image", "inspect", "--format", "{{.Size}}", reference))
        say(f"{reference}: {size / 1_000_000:.0f} MB")
