"""A Docker engine to build and run the images: one that already answers, else one of our own.

Our own engine is Debian's `docker.io` (installed with apt-get when missing and we are root),
started with no bridge and no firewall rules, so it touches nothing of the host's networking;
every build and container then uses the host network. Its data (images, build cache) lives in
the cache folder so that a second run is warm; its socket, pid file and runtime state live in a
temporary folder that is removed when it stops.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Debian's client: it builds with BuildKit itself, while other clients may need buildx.
DEBIAN_CLIENT = Path("/usr/bin/docker")
DOCKERD = Path("/usr/sbin/dockerd")
START_SECONDS = 60.0
STOP_SECONDS = 30.0


class EngineUnavailable(RuntimeError):
    """No engine answers and none can be started here (not root, or no package)."""


STARTED = time.monotonic()


def say(message: str) -> None:
    """A progress line with the seconds since start: where a cold run spends its time."""
    print(f"[images {time.monotonic() - STARTED:4.0f}s] {message}", flush=True)


def cache_dir() -> Path:
    """The one folder that outlives a run: engine data and the stand-in base tarball."""
    configured = os.environ.get("IMAGES_CACHE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "backend-images"


@dataclass(frozen=True)
class Engine:
    host: str  # a DOCKER_HOST value
    client: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def run(
        self, *args: str, check: bool = True, timeout: float | None = 600, quiet: bool = False
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.client, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        if not quiet and result.returncode != 0:
            say(f"docker {args[0]} exited {result.returncode}: {result.stderr.strip()[-500:]}")
        return result

    def stream(self, *args: str, timeout: float = 1800) -> None:
        """A long command (a build) whose output the reader should see as it comes."""
        subprocess.run([self.client, *args], env=self.env(), check=True, timeout=timeout)

    def output(self, *args: str) -> str:
        return self.run(*args).stdout.strip()

    def has_image(self, reference: str) -> bool:
        return self.run("image", "inspect", reference, check=False, quiet=True).returncode == 0


def _answers(client: str, host: str) -> bool:
    try:
        result = subprocess.run(
            [client, "version", "--format", "{{.Server.Version}}"],
            env={**os.environ, "DOCKER_HOST": host},
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _install_docker() -> None:
    say("installing Debian's docker.io with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"],
        check=True,
        env=env,
    )


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve()) + "/"
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def unmount_all_under(folder: Path) -> None:
    """dockerd leaves its `netns` bind mount behind; a folder with a mount in it cannot go."""
    for point in _mounts_under(folder):
        subprocess.run(["umount", "--lazy", point], check=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        say(f"dockerd {process.pid} did not stop within {STOP_SECONDS:.0f} s: killing it")
        process.kill()
        process.wait(timeout=STOP_SECONDS)


def _remove_leftovers(engine: Engine) -> None:
    """This data folder is ours alone: containers and volumes in it are from a run that was
    killed before it could clean up."""
    containers = engine.output("ps", "--all", "--quiet").split()
    if containers:
        say(f"removing {len(containers)} container(s) left by an interrupted run")
        engine.run("rm", "--force", "--volumes", *containers, check=False)
    engine.run("volume", "prune", "--force", check=False)


@contextmanager
def own_engine() -> Iterator[Engine]:
    """Start dockerd for the length of the block, then stop it by its pid and remove its
    runtime folder; its data folder stays in the cache."""
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers, and starting one needs root")
    if not (DOCKERD.exists() and DEBIAN_CLIENT.exists()):
        if shutil.which("apt-get") is None:
            raise EngineUnavailable("no Docker engine answers, and apt-get is not here")
        _install_docker()
    data = cache_dir() / "engine"
    data.mkdir(parents=True, exist_ok=True)
    runtime = Path(tempfile.mkdtemp(prefix="backend-engine-"))
    socket = runtime / "docker.sock"
    log_path = runtime / "dockerd.log"
    argv = [
        str(DOCKERD),
        "--iptables=false", "--ip-masq=false", "--bridge=none",
        "--data-root", str(data),
        "--exec-root", str(runtime / "exec"),
        "--pidfile", str(runtime / "dockerd.pid"),
        "--host", f"unix://{socket}",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    engine = Engine(host=f"unix://{socket}", client=str(DEBIAN_CLIENT))
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _answers(engine.client, engine.host):
            if process.poll() is not None or time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"dockerd did not start:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
        say(f"started dockerd (pid {process.pid}), data in {data}")
        _remove_leftovers(engine)
        yield engine
        # Images replaced by this run's builds; tagged images and the build cache stay warm.
        engine.run("image", "prune", "--force", check=False)
    finally:
        _stop(process)
        unmount_all_under(runtime)
        shutil.rmtree(runtime, ignore_errors=True)
        say(f"stopped dockerd (pid {process.pid})")


@contextmanager
def docker_engine() -> Iterator[Engine]:
    """The engine DOCKER_HOST (or the default socket) names, when Debian's client reaches it;
    else one of our own."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if DEBIAN_CLIENT.exists() and _answers(str(DEBIAN_CLIENT), host):
        say(f"using the engine at {host}")
        yield Engine(host=host, client=str(DEBIAN_CLIENT))
        return
    with own_engine() as engine:
        yield engine
