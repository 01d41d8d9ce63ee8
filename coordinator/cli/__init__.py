"""The `retention` command line (SPEC §6); each command group lives in its own module."""

from __future__ import annotations

import os
import sys

from sqlalchemy.exc import DBAPIError, ProgrammingError

from coordinator.cli import (
    audit,
    db,
    holds,
    kafka,
    keys,
    policies,
    purge,
    relay,
    report,
    serve,
    services,
    status,
    tokens,
)
from coordinator.cli._app import ExitCode, app, err_console
from schemas.logs import configure_logging

__all__ = ["app", "main"]

app.add_typer(db.app, name="db")
app.add_typer(audit.app, name="audit")
app.command("status")(status.status)
app.command("report")(report.report)
app.command("certificate")(status.certificate)
app.command("relay")(relay.relay)
app.add_typer(holds.app, name="holds")
app.add_typer(policies.app, name="policies")
app.add_typer(services.app, name="services")
app.add_typer(services.acks_app, name="acks")
app.add_typer(keys.app, name="keys")
app.add_typer(tokens.app, name="tokens")
app.command("plan")(purge.plan)
app.command("run")(purge.run)
app.command("serve")(serve.serve)
app.add_typer(kafka.app, name="kafka")


def main() -> None:
    # Logs go to stderr so that `--json` output on stdout stays one document.
    configure_logging(os.environ.get("RETENTION_LOG_LEVEL", "WARNING"))
    # Operational failures get one clear line, not a driver traceback.
    try:
        app()
    except ProgrammingError as exc:
        if "does not exist" in str(exc.orig):
            err_console.print(
                f"[red]database schema missing or outdated[/red] ({exc.orig}): "
                "run `retention db upgrade`"
            )
        else:
            err_console.print(f"[red]database error:[/red] {exc.orig}")
        sys.exit(ExitCode.ERRORS)
    except (DBAPIError, OSError) as exc:
        detail = exc.orig if isinstance(exc, DBAPIError) else exc
        err_console.print(
            f"[red]cannot reach the database:[/red] {detail} (check RETENTION_DATABASE_URL)"
        )
        sys.exit(ExitCode.ERRORS)
