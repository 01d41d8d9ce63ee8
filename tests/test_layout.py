"""The coordinator's layout stays what docs/architecture.md describes (issue 13's limits)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COORDINATOR = ROOT / "coordinator"
IGNORED = {"__pycache__"}


def _entries() -> list[str]:
    return sorted(p.name for p in COORDINATOR.iterdir() if p.name not in IGNORED)


def test_coordinator_has_at_most_twenty_top_level_entries() -> None:
    entries = _entries()
    assert len(entries) <= 20, entries


def test_every_top_level_room_is_named_in_the_architecture_doc() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rooms = [e for e in _entries() if (COORDINATOR / e).is_dir() or e.endswith(".py")]
    missing = [
        e
        for e in rooms
        if f"`coordinator/{e}/`" not in doc
        and f"`coordinator/{e}`" not in doc
        and f"`{e}`" not in doc
    ]
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_nothing_in_the_coordinator_imports_the_sdk() -> None:
    offenders = []
    for path in COORDINATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "consumer_sdk"
            ]
    assert not offenders, offenders
