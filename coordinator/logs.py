"""Where the coordinator's structlog output goes: stderr, so stdout stays for `--json`."""

from __future__ import annotations

import sys
from typing import Any

import structlog

__all__ = ["configure_logging"]


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    # Resolved per call, so a replaced sys.stderr (tests, embedding) is honoured.
    return structlog.PrintLogger(sys.stderr)


def configure_logging() -> None:
    structlog.configure(logger_factory=_stderr_logger, cache_logger_on_first_use=False)
