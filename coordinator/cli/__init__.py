"""The `retention` command line (SPEC §6); each command group lives in its own module."""

from __future__ import annotations

import os
import sys

from rich.markup import escape
from sqlalchemy.exc import DBAPIError, ProgrammingError

from coordinator.cli import (
    archive,
    audit,
    db,
    dlq,
    holds,
    kafka,
    keys,
    notifications,
    policies,
    purge,
    relay,
    report,
    republish,
    requests,
    restore,
    serve,
    services,
    status,
    tokens,
    verify,
)
from coordinator.cli._app import ExitCode, app, err_console, load_settings, start_command
from coordinator.cli._locks import gave_up_waiting, lock_report
from schemas import error_text
from schemas.database import mask_passwords
from schemas.errors import traceback_text
from schemas.logs import configure_logging

__all__ = ["app", "main"]

app.add_typer(db.app, name="db")
app.add_typer(dlq.app, name="dlq")
app.add_typer(audit.app, name="audit")
app.command("status")(status.status)
app.command("report")(report.report)
app.command("certificate")(status.certificate)
app.command("relay")(relay.relay)
app.command("republish")(republish.republish)
app.add_typer(holds.app, name="holds")
app.add_typer(policies.app, name="policies")
app.add_typer(services.app, name="services")
app.add_typer(services.acks_app, name="acks")
app.add_typer(keys.app, name="keys")
app.add_typer(requests.app, name="requests")
app.add_typer(tokens.app, name="tokens")
app.command("plan")(purge.plan)
app.command("run")(purge.run)
app.command("serve")(serve.serve)
app.add_typer(kafka.app, name="kafka")
app.add_typer(keys.app, name="keys")
app.add_typer(archive.app, name="archive")
app.command("restore")(restore.restore)
app.add_typer(notifications.app, name="notifications")
app.command("verify")(verify.verify)


def main() -> None:
    # Logs go to stderr so that `--json` output on stdout stays one document.
    configure_logging(os.environ.get("RETENTION_LOG_LEVEL", "WARNING"))
    start_command(sys.argv)
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
            # The message may quote the data a statement was about (SPEC §13).
            err_console.print(f"[red]database error:[/red] {error_text(exc)}")
        sys.exit(ExitCode.ERRORS)
    except (DBAPIError, OSError) as exc:
        if isinstance(exc, DBAPIError) and gave_up_waiting(exc):
            # A frozen holder (a stopped `serve` replica mid ack batch) would otherwise
            # keep the command waiting without a word.
            err_console.print(f"[red]lock wait:[/red] {escape(lock_report(exc, load_settings()))}")
        else:
            err_console.print(
                f"[red]cannot reach the database:[/red] {error_text(exc)} "
                "(check RETENTION_DATABASE_URL)"
            )
        sys.exit(ExitCode.ERRORS)
    except Exception as exc:
        # A bug or a bad setting: where it happened, and the message with URL passwords
        # masked (a URL that fails to parse is quoted whole).
        print(traceback_text(exc), file=sys.stderr)
        err_console.print(f"[red]{error_text(exc)}:[/red] {escape(mask_passwords(str(exc)))}")
        sys.exit(ExitCode.ERRORS)
