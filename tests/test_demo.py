"""`make demo` end to end, small: every event completed, summary printed, all stopped."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid

import pytest

from services import EXAMPLES
from tests import infra


@pytest.mark.slow
def test_demo_completes_every_event(postgres_url: str, kafka_bootstrap: str) -> None:
    name = f"test_demo_{uuid.uuid4().hex[:8]}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        result = subprocess.run(
            [sys.executable, "-m", "demo", "--scale", "5", "--port", str(port), "--name", name],
            cwd=infra.ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for database in (name, f"{name}_services"):
            asyncio.run(infra.drop_database(infra.with_database(postgres_url, database)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "every event completed" in result.stdout
    assert "/ui/  (sign in with the read or write token" in result.stdout
    assert "exports all 8 SPEC §8 metrics" in result.stdout
    for service in (e.name for e in EXAMPLES):
        assert service in result.stdout
    # The two erasure requests: one completed, one on hold naming the hold's reason.
    assert "Erasure requests" in result.stdout
    assert "completed" in result.stdout
    assert "on_hold" in result.stdout
    assert "Data subject dispute (demo)" in result.stdout
    # One deleted user verified on demand: every service counted 0 records left.
    assert "verified after its deletion: verified (" in result.stdout
