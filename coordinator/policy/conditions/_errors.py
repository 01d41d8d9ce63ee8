"""The one error the condition language raises."""

from __future__ import annotations

from coordinator import CoordinatorError


class ConditionError(CoordinatorError, ValueError):
    """A condition outside the language, or one that does not fit its table.

    ``str(error)`` reads ``<reason> at position <n>``; callers that know where the
    condition sits in a larger file can compose their own message from ``reason``,
    ``position`` (0-based offset into the condition text) and ``fragment`` (the
    offending text, verbatim).
    """

    def __init__(self, reason: str, position: int, fragment: str) -> None:
        self.reason = reason
        self.position = position
        self.fragment = fragment
        super().__init__(f"{reason} at position {position}")


def show(fragment: str, limit: int = 40) -> str:
    """A fragment quoted for a message, cut short so one bad policy cannot flood a log."""
    if len(fragment) > limit:
        fragment = fragment[:limit] + "…"
    return repr(fragment)


# ---------------------------------------------------------------------------- tokens
