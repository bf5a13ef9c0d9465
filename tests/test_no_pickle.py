"""No pickle anywhere: unpickling a message is running code for whoever can write to Redis.

tests/worker/test_config.py checks the worker accepts JSON only; this reads the source of every
deployable, so nothing imports a pickle-like module or names a pickle serializer either.
Comments may explain why (they are not code); imports, names and strings may not.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["api", "worker", "shared"]
# Modules that deserialize into arbitrary objects, and kombu's content type for pickle.
MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "jsonpickle", "shelve"}
PICKLISH = re.compile(r"pickle|x-python-serialize|\bdill\b|\bshelve\b", re.IGNORECASE)


def _spelled(node: ast.AST) -> list[str]:
    """The identifiers and strings a node spells out."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        return (
            modules
            + [alias.name for alias in node.names]
            + [alias.asname for alias in node.names if alias.asname]
        )
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    return []


def findings(source: str) -> list[str]:
    """Where a piece of Python source imports, names or spells out a pickle serializer."""
    found = []
    for node in ast.walk(ast.parse(source)):
        for word in _spelled(node):
            if PICKLISH.search(word) or word.split(".")[0] in MODULES:
                found.append(f"line {getattr(node, 'lineno', '?')}: {word!r}")
    return found


def source_files() -> list[Path]:
    files = [
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    ]
    assert any(path.suffix == ".py" for path in files)
    return sorted(files)


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import cloudpickle as cp",
        "from pickle import loads",
        "from kombu.serialization import pickle_loads",
        "app.conf.task_serializer = 'pickle'",
        "accept_content = ['json', 'application/x-python-serialize']",
        "loads = __import__('pickle').loads",
        "import dill",
    ],
)
def test_the_scan_finds_pickle_however_it_is_spelled(snippet: str) -> None:
    assert findings(snippet)


def test_the_scan_lets_comments_and_json_through() -> None:
    assert findings("# JSON only: a pickle message is code execution\nimport json") == []


def test_no_deployable_imports_or_names_pickle() -> None:
    found = {}
    for path in source_files():
        text = path.read_text(errors="replace")
        if path.suffix == ".py":
            problems = findings(text)
        else:  # pyproject.toml, the migration template...: any mention counts
            problems = [line for line in text.splitlines() if PICKLISH.search(line)]
        if problems:
            found[str(path.relative_to(ROOT))] = problems
    assert found == {}
