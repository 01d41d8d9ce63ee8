"""A PostgreSQL server of one test's own, so a scenario can crash and restart it.

The shared server on 5432 serves every other test on the machine and is never stopped.
A scenario that restarts PostgreSQL itself runs its stack on a private server instead:
`private_postgres()` runs `initdb` into a fresh temporary directory, starts the server
on a free port on 127.0.0.1 (scram-sha-256 over TCP), creates the role the product
uses (`retention`, LOGIN CREATEDB, like the shared server's) and removes everything on
exit. `crash()` is `pg_ctl stop -m immediate`: the postmaster SIGQUITs every backend,
so every client connection dies at once and the next start runs crash recovery, as
after a power cut of the database host (the OS keeps the WAL, so `fsync=off` only
speeds the test up). `start()` brings it back on the same port and data.

The server binaries come from `RETENTION_PG_BINDIR`, else `pg_config --bindir`, else
Debian's /usr/lib/postgresql/<version>/bin. PostgreSQL refuses to run as root: as root
the commands run as the `postgres` OS user (runuser), otherwise as the current user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

__all__ = [
    "PrivatePostgres",
    "PrivatePostgresError",
    "find_bindir",
    "free_port",
    "private_postgres",
]

ROLE = "retention"
SERVER_OS_USER = "postgres"
START_TIMEOUT_S = 120
"""Crash recovery on a busy shared machine; `pg_ctl start -w` waits this long at most."""

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "fsync": "off",
    "log_min_messages": "warning",
}


class PrivatePostgresError(RuntimeError):
    """The private server could not be set up, started or stopped; the message says why."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _has_server(bindir: Path) -> bool:
    return all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))


def find_bindir() -> Path:
    """Where `initdb`, `pg_ctl` and `postgres` are; a clear error if nowhere."""
    tried: list[str] = []
    if configured := os.environ.get("RETENTION_PG_BINDIR"):
        if _has_server(Path(configured)):
            return Path(configured)
        raise PrivatePostgresError(
            f"RETENTION_PG_BINDIR={configured} has no initdb, pg_ctl and postgres"
        )
    if pg_config := shutil.which("pg_config"):
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(done.stdout.strip())
        if done.returncode == 0 and _has_server(candidate):
            return candidate
        tried.append(f"{candidate} (pg_config --bindir)")
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in debian:
        if _has_server(candidate):
            return candidate
        tried.append(str(candidate))
    raise PrivatePostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        f"{', '.join(tried) or 'pg_config --bindir or /usr/lib/postgresql/*/bin'}: install "
        "the server package (Debian: postgresql-15) or set RETENTION_PG_BINDIR"
    )


@dataclass
class PrivatePostgres:
    """One private server: its binaries, data directory, port and the role's password."""

    bindir: Path
    root: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """The `retention` role's URL for `database` on this server."""
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout_s: float = 60) -> None:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_OS_USER, "--", *command]
        try:
            subprocess.run(
                command,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=True,
            )
        except subprocess.CalledProcessError as exc:
            raise PrivatePostgresError(
                f"{tool} {' '.join(args)} failed ({exc.returncode}):\n{exc.stdout}{exc.stderr}"
                f"{self.log_tail()}"
            ) from None
        except subprocess.TimeoutExpired:
            raise PrivatePostgresError(
                f"{tool} {' '.join(args)} still running after {timeout_s}s\n{self.log_tail()}"
            ) from None

    def log_tail(self, chars: int = 2000) -> str:
        if not self.log_path.exists():
            return ""
        return "\nserver log:\n" + self.log_path.read_text(errors="replace")[-chars:]

    def start(self) -> None:
        """Start (or, after `crash`, recover and start) and wait until it accepts connections."""
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            timeout_s=START_TIMEOUT_S + 10,
        )

    def crash(self) -> None:
        """Immediate shutdown: every backend dies now, no checkpoint; recovery on next start."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


def _prepare_root(bindir: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="faults-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            shutil.rmtree(root)
            raise PrivatePostgresError(
                f"running as root, but there is no OS user {SERVER_OS_USER!r} to run "
                f"{bindir / 'postgres'} as (PostgreSQL refuses root)"
            ) from None
        os.chown(root, owner.pw_uid, owner.pw_gid)
    return root


async def _create_role(server: PrivatePostgres, superuser_password: str) -> None:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=server.port,
        user=SERVER_OS_USER,
        password=superuser_password,
        database="postgres",
        timeout=30,
    )
    try:
        # The password is ours (token_hex): no quoting problem in the literal.
        await conn.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{server.password}'")
    finally:
        await conn.close()


def _initdb(server: PrivatePostgres, superuser_password: str) -> None:
    pwfile = server.root / "pwfile"
    pwfile.write_text(superuser_password + "\n")
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SERVER_OS_USER)
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    pwfile.chmod(0o600)
    args: Sequence[str] = (
        "-D",
        str(server.data),
        "-U",
        SERVER_OS_USER,
        f"--pwfile={pwfile}",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--no-sync",
    )
    server._run("initdb", *args, timeout_s=120)
    pwfile.unlink()
    settings = {**SETTINGS, "port": str(server.port), "unix_socket_directories": f"'{server.root}'"}
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write("\n# tests/faults/private_postgres.py\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh, running private server with the `retention` role; removed afterwards."""
    bindir = find_bindir()
    root = _prepare_root(bindir)
    server = PrivatePostgres(bindir, root, free_port(), secrets.token_hex(12))
    try:
        superuser_password = secrets.token_hex(12)
        _initdb(server, superuser_password)
        server.start()
        asyncio.run(_create_role(server, superuser_password))
        yield server
    finally:
        try:
            if server.running():
                server._run("pg_ctl", "stop", "-D", str(server.data), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(root, ignore_errors=True)
