from collections.abc import Callable, Iterable, Sequence

def forest(
    keys: Sequence[bytes | None], values: Sequence[bytes | None], tree_size: int, /
) -> list[tuple[bytes, list[bytes]]]: ...
def forest_v2(
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    tree_size: int,
    salts: bytes,
    sign: Callable[[bytes], bytes],
    kid: bytes,
    /,
) -> list[bytes | None]: ...
def root_v2(key: bytes | None, value: bytes | None, batch: bytes, /) -> bytes: ...

class Walker:
    def walk(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]],
        /,
    ) -> tuple[bytes, bytes] | None: ...
