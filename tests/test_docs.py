"""The README's settings table names every setting, so the docs cannot fall behind the code."""

from pathlib import Path

from shared.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_in_the_readme_table() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = {row.split("`")[1] for row in rows}
    assert {name.upper() for name in Settings.model_fields} <= documented
