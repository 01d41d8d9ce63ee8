from collections.abc import Sequence

def forest(
    keys: Sequence[bytes | None], values: Sequence[bytes | None], tree_size: int, /
) -> list[tuple[bytes, list[bytes]]]: ...
