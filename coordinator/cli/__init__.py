"""The `retention` command line (SPEC §6); each command group lives in its own module."""

from __future__ import annotations

from coordinator.cli import audit, db
from coordinator.cli._app import app

__all__ = ["app", "main"]

app.add_typer(db.app, name="db")
app.add_typer(audit.app, name="audit")


def main() -> None:
    app()
