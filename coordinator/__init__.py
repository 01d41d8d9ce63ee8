"""The retention coordinator: policies, planning, purge, holds, outbox relay, tracking."""

__all__ = ["CoordinatorError"]


class CoordinatorError(Exception):
    """The root of the coordinator's own errors; each module's errors hang under it
    (and under the built-in they are a kind of, e.g. `ValueError` for bad input)."""
