from collections.abc import Iterable, Sequence

def forest(
    keys: Sequence[bytes | None], values: Sequence[bytes | None], tree_size: int, /
) -> list[tuple[bytes, list[bytes]]]: ...

class Walker:
    def walk(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]],
        /,
    ) -> tuple[bytes, bytes] | None: ...
