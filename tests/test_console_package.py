"""The wheel ships every template and static file of the console (pyproject package-data)."""

from __future__ import annotations

import fnmatch
import tomllib

from tests.infra import ROOT


def test_package_data_covers_every_console_asset() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["coordinator.console"]
    package = ROOT / "coordinator" / "console"
    assets = [
        p.relative_to(package).as_posix()
        for folder in ("templates", "static")
        for p in (package / folder).rglob("*")
        if p.is_file()
    ]
    assert len(assets) > 20
    missing = [a for a in assets if not any(fnmatch.fnmatchcase(a, pat) for pat in patterns)]
    assert missing == []
