"""Conventions docs/architecture.md states that a reviewer would otherwise have to check by
eye: one root for the coordinator's errors, and `__all__` in every CLI module."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import coordinator
import coordinator.cli
from coordinator import CoordinatorError


def _modules(package: ModuleType) -> list[ModuleType]:
    # Migrations are alembic scripts, not modules of the product's own.
    return [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        if ".migrations." not in info.name
    ]


def test_every_coordinator_error_hangs_under_the_root() -> None:
    errors = [
        cls
        for module in _modules(coordinator)
        for cls in vars(module).values()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__ == module.__name__
    ]
    assert len(errors) > 20  # the walk reached the packages
    assert [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in errors
        if not issubclass(cls, CoordinatorError)
    ] == []


def test_every_cli_module_declares_its_exports() -> None:
    modules = _modules(coordinator.cli)
    assert len(modules) > 10
    assert [m.__name__ for m in modules if "__all__" not in vars(m)] == []
