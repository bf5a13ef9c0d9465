"""`make migration name=...` (scripts/new_migration.py): numbered, formatted, one head."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

import shared.migrations
from scripts.new_migration import create, next_revision_id
from shared.schema import alembic_config, expected_heads


@pytest.fixture
def scratch_migrations(tmp_path: Path) -> Config:
    """A copy of the project's migrations, so the test writes nothing into the checkout."""
    source = Path(shared.migrations.__file__).parent
    target = tmp_path / "migrations"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = Config()
    config.set_main_option("script_location", str(target))
    return config


def test_the_project_keeps_one_numbered_head() -> None:
    [head] = expected_heads()
    assert head.isdigit()
    assert next_revision_id(alembic_config()) == f"{int(head) + 1:04d}"


def test_a_new_migration_is_numbered_after_the_last_and_formatted(
    scratch_migrations: Config,
) -> None:
    [head] = ScriptDirectory.from_config(scratch_migrations).get_heads()
    expected = f"{int(head) + 1:04d}"

    path = create(scratch_migrations, "add_user_nickname", autogenerate=False)

    assert path.name == f"{expected}_add_user_nickname.py"
    assert ScriptDirectory.from_config(scratch_migrations).get_heads() == [expected]
    text = path.read_text()
    assert f'revision: str = "{expected}"' in text
    assert f'down_revision: str | None = "{head}"' in text
    ruff = [sys.executable, "-m", "ruff"]
    assert subprocess.run([*ruff, "format", "--check", str(path)], check=False).returncode == 0


def test_a_name_that_is_not_snake_case_is_refused(scratch_migrations: Config) -> None:
    with pytest.raises(SystemExit, match="snake_case"):
        create(scratch_migrations, "Add nickname", autogenerate=False)
