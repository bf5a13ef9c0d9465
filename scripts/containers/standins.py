"""Base images: the official ones when a registry answers, else stand-ins from Debian packages.

- Python: `debootstrap --variant=minbase bookworm` with python3, ca-certificates and tzdata,
  plus the CA certificates this host added locally (an inspecting proxy's, for instance), so
  that uv inside a build reaches the package index as the host does; then `docker import`.
  The tarball is kept in the cache folder, keyed on its inputs, since debootstrap is most of a
  cold run.
- uv: the `/uv` and `/uvx` binaries of the uv wheel on PyPI, at the version UV_IMAGE pins.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scripts.containers.engine import Engine, cache_dir, say, unmount_all_under

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "api.Dockerfile"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "ca-certificates", "tzdata")
LOCAL_CA = Path("/usr/local/share/ca-certificates")
PULL_SECONDS = 60.0


@dataclass(frozen=True)
class BaseImages:
    python: str
    uv: str
    standin: bool

    def build_args(self) -> list[str]:
        return ["--build-arg", f"PYTHON_IMAGE={self.python}", "--build-arg", f"UV_IMAGE={self.uv}"]


def default_arg(name: str) -> str:
    """A global ARG default of the Dockerfiles: one source for the pinned base images."""
    found = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"{DOCKERFILE} has no ARG {name}=...")
    return found[1]


def _pulled(engine: Engine, reference: str) -> bool:
    if engine.has_image(reference):
        return True
    try:
        result = engine.run("pull", "--quiet", reference, check=False, timeout=PULL_SECONDS)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def base_images(engine: Engine) -> BaseImages:
    python, uv = default_arg("PYTHON_IMAGE"), default_arg("UV_IMAGE")
    if _pulled(engine, python) and _pulled(engine, uv):
        say(f"base images from a registry: {python}, {uv}")
        return BaseImages(python, uv, standin=False)
    say(f"no registry answers for {python} and {uv}: building stand-ins from Debian packages")
    return BaseImages(python_standin(engine), uv_standin(engine, uv), standin=True)


def _local_certificates() -> list[Path]:
    return sorted(LOCAL_CA.rglob("*.crt")) if LOCAL_CA.is_dir() else []


def python_standin(engine: Engine) -> str:
    key = hashlib.sha256()
    key.update(f"{SUITE} {' '.join(PACKAGES)}".encode())
    for certificate in _local_certificates():
        key.update(certificate.read_bytes())
    tag = f"backend-standin/python:{SUITE}-{key.hexdigest()[:12]}"
    if engine.has_image(tag):
        say(f"python stand-in {tag} is in the engine already")
        return tag
    tarball = cache_dir() / "base" / f"python-{SUITE}-{key.hexdigest()[:12]}.tar"
    if not tarball.exists():
        _debootstrap(tarball)
    else:
        say(f"python stand-in from the cached {tarball}")
    engine.run(
        "import",
        "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change", "ENV LANG=C.UTF-8",
        "--change", 'CMD ["python3"]',
        str(tarball), tag,
    )  # fmt: skip
    return tag


def _debootstrap(tarball: Path) -> None:
    if shutil.which("debootstrap") is None:
        say("installing debootstrap with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True, env=env)
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="backend-rootfs-"))
    rootfs = work / "rootfs"
    try:
        say(f"debootstrap {SUITE} ({', '.join(PACKAGES)}): about a minute")
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(rootfs), MIRROR],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        certificates = _local_certificates()
        if certificates:
            target = rootfs / "usr/local/share/ca-certificates"
            target.mkdir(parents=True, exist_ok=True)
            for certificate in certificates:
                shutil.copy2(certificate, target / certificate.name)
            # The host's TMPDIR (make test sets one of its own) does not exist inside the root.
            inside = {key: value for key, value in os.environ.items() if key != "TMPDIR"}
            subprocess.run(
                ["chroot", str(rootfs), "update-ca-certificates"],
                check=True, stdout=subprocess.DEVNULL, env=inside,
            )  # fmt: skip
            say(f"the stand-in trusts this host's {len(certificates)} local CA certificate(s)")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True
        )
        partial.rename(tarball)
    finally:
        unmount_all_under(work)
        shutil.rmtree(work, ignore_errors=True)


def uv_standin(engine: Engine, official: str) -> str:
    version = official.rsplit(":", 1)[1]
    tag = f"backend-standin/uv:{version}"
    if engine.has_image(tag):
        return tag
    uv_command = shutil.which("uv")
    if uv_command is None:
        raise RuntimeError("uv is not on PATH (make installs it)")
    with tempfile.TemporaryDirectory(prefix="backend-uv-") as folder:
        # The wheel's binaries, installed into a plain folder: uv has no `download` command.
        subprocess.run(
            [uv_command, "pip", "install", "--quiet", "--no-deps", "--target", folder,
             f"uv=={version}"],
            check=True,
        )  # fmt: skip
        layer = Path(folder) / "uv.tar"
        with tarfile.open(layer, mode="w") as tar:
            for name in ("uv", "uvx"):
                tar.add(Path(folder) / "bin" / name, arcname=name)
        engine.run("import", str(layer), tag)
    say(f"uv stand-in {tag} from the uv {version} wheel")
    return tag
