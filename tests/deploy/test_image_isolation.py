"""The api and worker images are separate: each member's environment, built the way its
Dockerfile builds it, holds its own package and `shared`, and not the other member."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import REPO, output, run

EXPECTED = {
    # member: (importable, not importable)
    "api": (["api", "shared", "fastapi"], ["worker", "celery"]),
    "worker": (["worker", "shared", "celery"], ["api", "fastapi"]),
}


def build_environment(member: str, target: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH")
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    # The environment goes to tmp_path, never to the repository's .venv.
    env.update(UV_PROJECT_ENVIRONMENT=str(target), UV_PYTHON_DOWNLOADS="never", UV_PYTHON="3.11")
    argv = [uv, "sync", "--locked", "--no-dev", "--package", member, "--no-editable"]
    result = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, output(result)


def imports(python: Path, module: str, cwd: Path) -> bool:
    # -I: neither the working directory nor PYTHON* variables reach sys.path, so the repository's
    # worker/ and api/ folders cannot pass for namespace packages.
    result = run([str(python), "-I", "-c", f"import {module}"], cwd=cwd)
    if result.returncode != 0:
        assert f"No module named '{module}'" in result.stderr, output(result)
    return result.returncode == 0


@pytest.mark.parametrize("member", sorted(EXPECTED))
def test_member_environment_holds_only_its_own_code(member: str, tmp_path: Path) -> None:
    target = tmp_path / "venv"
    build_environment(member, target)
    python = target / "bin" / "python"
    assert python.is_file()
    assert target.resolve() != (REPO / ".venv").resolve()

    present, absent = EXPECTED[member]
    for module in present:
        assert imports(python, module, tmp_path), f"{module} missing from the {member} image"
    for module in absent:
        assert not imports(python, module, tmp_path), f"{module} leaked into the {member} image"

    # --no-editable: the members are real packages in site-packages, not links to the sources.
    site = next((target / "lib").glob("python3.*/site-packages"))
    assert (site / "shared" / "__init__.py").is_file()
    assert (site / member / "__init__.py").is_file()
    assert (site / "shared" / "migrations" / "env.py").is_file(), "migrations ship in shared"
