"""Log event names are `snake_case` across the product (docs/architecture.md, Conventions).

Operators filter and alert on the `event` field, so a name must be one stable token; the
details go into fields. Checked on the source, so a branch never logged in tests counts too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "consumer_sdk", "coordinator")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}
NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def _event_names(path: Path) -> list[tuple[int, str]]:
    """(line, first argument) of every `log.<level>("...")` call with a literal name; a
    conditional expression counts with both of its literal branches."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LEVELS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
            and node.args
        ):
            continue
        first = node.args[0]
        branches = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
        for branch in branches:
            if isinstance(branch, ast.Constant) and isinstance(branch.value, str):
                found.append((node.lineno, branch.value))
    return found


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_scan_sees_log_calls_in_every_package() -> None:
    for package in PACKAGES:
        names = [n for p in (ROOT / package).rglob("*.py") for _, n in _event_names(p)]
        assert names, f"no log call found under {package}/: the scan is broken"


def test_log_event_names_are_snake_case() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {name!r}"
        for path in _sources()
        for line, name in _event_names(path)
        if not NAME.fullmatch(name)
    ]
    assert not bad, "log event names not snake_case:\n" + "\n".join(bad)
