"""The compliance console under `/ui/` (SPEC §14): server-rendered pages for the people
who answer to a regulator. docs/console.md describes the pages and how to add one."""

from coordinator.console.app import mount_console

__all__ = ["mount_console"]
