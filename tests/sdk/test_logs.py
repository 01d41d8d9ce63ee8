"""Our logs and the libraries' logs come out as one JSON stream."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from schemas.logs import configure_logging


def test_ours_and_library_logs_are_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    try:
        structlog.get_logger("coordinator.test").info("batch_purged", policy="p", rows=3)
        logging.getLogger("sqlalchemy.engine").warning("pool %s exhausted", "main")
        logging.getLogger("aiokafka").info("chatty detail nobody acts on")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert [(d["event"], d["level"], d["logger"]) for d in lines] == [
        ("batch_purged", "info", "coordinator.test"),
        ("pool main exhausted", "warning", "sqlalchemy.engine"),
    ]
    assert lines[0]["rows"] == 3
    assert lines[0]["timestamp"].endswith("Z")
