"""Declared services for tests, derived from the services' own handler registrations.

A test declares exactly the services it runs (SPEC §9: the declaration decides who must
acknowledge), with handles read from each service's `create_app()`, never restated.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from coordinator.policy.model import DeclaredService
from tests import keys
from tests.infra import ROOT

__all__ = ["declare", "handles_of", "is_service", "key_file", "services_block"]

_MODULES = {
    "crm": "tests.e2e.crm_service",
    "legacy": "tests.e2e.legacy_service",
    "flaky": "tests.faults.flaky_service",
}


_NOWHERE = "postgresql://declared.invalid/only"
"""Never connected to: only the handler registrations are read."""


def module_of(name: str) -> str:
    """A service name, or already a module path (`package.module`)."""
    return name if "." in name else _MODULES.get(name, f"services.{name}")


@cache
def handles_of(module: str) -> tuple[str, dict[str, list[str]]]:
    """(service name, entity type → actions) of the service `module` builds."""
    create_app: Any = importlib.import_module(module).create_app
    if module in (_MODULES["crm"], _MODULES["legacy"]):
        app = create_app()
    elif module == _MODULES["flaky"]:
        app = create_app(seed=0, database_url=_NOWHERE)
    else:
        app = create_app(database_url=_NOWHERE)
    consumer = getattr(app, "retention", app)  # the Faust adapter wraps the consumer
    registration = consumer.registration()
    return registration.service, {
        h.entity_type: [a.value for a in h.actions] for h in registration.handles
    }


def declare(names: Iterable[str]) -> list[DeclaredService]:
    """Declared services for these service names or modules, each with its own test key
    (`tests.keys.private_key(service)`; service processes get it from `key_file`)."""
    found = dict(handles_of(module_of(name)) for name in names)
    return [keys.declared(service, handles, key=service) for service, handles in found.items()]


def is_service(module: str) -> bool:
    """Whether `module` builds an SDK service (it has a `create_app`)."""
    return hasattr(importlib.import_module(module_of(module)), "create_app")


def key_file(module: str) -> Path:
    """The private key file of the service `module` builds (written on first use)."""
    service, _ = handles_of(module_of(module))
    return keys.write_key_files(ROOT / ".cache" / "test-keys", service)[service]


def services_block(names: Iterable[str]) -> list[dict[str, Any]]:
    """The `services:` list of a policy file declaring these services."""
    return [s.model_dump(mode="json", exclude_defaults=True) for s in declare(names)]
