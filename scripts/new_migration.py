"""A new migration, numbered after the last one and formatted: `make migration name=add_x`.

`alembic revision --autogenerate` alone gives a random revision id and code ruff would
reformat; the project numbers its migrations (0001, 0002, ...) and keeps one head. This
compares the models with the database (migrated to head first by `make migration`), writes
`shared/src/shared/migrations/versions/<NNNN>_<name>.py` with revision id `<NNNN>`, and runs
ruff on it. Read what autogenerate wrote before committing it: it cannot see renames, and
docs/tasks.md says how to keep a migration safe while the previous release still runs.

Usage: python scripts/new_migration.py NAME [--empty]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from shared.schema import alembic_config

NAME = re.compile(r"^[a-z][a-z0-9_]{0,59}$")


def next_revision_id(config: Config) -> str:
    """One more than the highest numbered revision, four digits; refuses more than one head."""
    script = ScriptDirectory.from_config(config)
    heads = script.get_heads()
    if len(heads) > 1:
        raise SystemExit(f"more than one alembic head ({', '.join(sorted(heads))}): merge first")
    numbers = [int(rev.revision) for rev in script.walk_revisions() if rev.revision.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


def create(config: Config, name: str, *, autogenerate: bool) -> Path:
    if not NAME.match(name):
        raise SystemExit(f"name a migration in snake_case (a-z, 0-9, _), not {name!r}")
    revision = next_revision_id(config)
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    script = command.revision(
        config, message=name.replace("_", " "), autogenerate=autogenerate, rev_id=revision
    )
    assert script is not None
    assert not isinstance(script, list)  # one revision, as there is one head
    path = Path(script.path)
    ruff = [sys.executable, "-m", "ruff"]
    subprocess.run([*ruff, "check", "--fix", "--quiet", str(path)], check=False)
    subprocess.run([*ruff, "format", "--quiet", str(path)], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="what it does, in snake_case: add_user_nickname")
    parser.add_argument(
        "--empty", action="store_true", help="no autogenerate: an empty upgrade() to write"
    )
    args = parser.parse_args()
    path = create(alembic_config(), args.name, autogenerate=not args.empty)
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
