"""Example downstream services, built only on `consumer_sdk` (run: `python -m services.<name>`).

`services.EXAMPLES` describes every one of them (`services.example.Example`); the demo,
the benchmarks, the test harnesses and tests/test_compose.py iterate it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.example import Example

__all__ = ["EXAMPLES", "NAMES"]

NAMES = ("notifications", "preferences", "billing", "search_index")
"""The one list of example services, in start order; each is the package `services.<name>`."""


def __getattr__(name: str) -> tuple[Example, ...]:
    # Imported on first use: `python -m services.billing` need not import the others
    # (search_index needs the optional `faust` extra).
    if name == "EXAMPLES":
        examples = tuple(importlib.import_module(f"services.{n}").EXAMPLE for n in NAMES)
        globals()["EXAMPLES"] = examples
        return examples
    raise AttributeError(f"module 'services' has no attribute {name!r}")
