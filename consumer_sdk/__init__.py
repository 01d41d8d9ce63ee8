"""The library each downstream service embeds to handle retention events (SPEC §5)."""

__all__: list[str] = []
