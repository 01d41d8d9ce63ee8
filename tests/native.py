"""The C modules under test: skipped where they were not built, never under `make test`.

`make test` sets RETENTION_TEST_NATIVE_SIGNING=required (its machines have a C compiler
and OpenSSL's headers): there a test of a C path that did not build fails instead of
skipping, since it would otherwise pass by not running.
"""

from __future__ import annotations

import os

import pytest

REQUIRED = "RETENTION_TEST_NATIVE_SIGNING"


def required() -> bool:
    """Whether the C modules must have been built (`make test`)."""
    return os.environ.get(REQUIRED) == "required"


def native_or_skip(built: bool, module: str, *, whole_module: bool = False) -> None:
    """Go on where `module` was built; else fail under `make test`, skip elsewhere
    (`whole_module`: called at a test module's top level)."""
    if built:
        return
    if required():
        pytest.fail(
            f"{module} did not build: `pip install -v --no-deps -e .` shows why (it needs "
            "a C compiler and OpenSSL's headers: `make native-deps`)",
            pytrace=False,
        )
    pytest.skip(f"{module} is not built", allow_module_level=whole_module)
