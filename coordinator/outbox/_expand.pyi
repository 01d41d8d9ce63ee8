from collections.abc import Callable, Sequence

# `BatchEncoder`'s rule path for one validated batch: the event ids (the prefix and 8 hex
# digits of (first + n) & 0xFFFFFFFF), keys (key_prefix + the entity's UTF-8) and values
# (head "id" middle entity tail subject end, the entity and subject as JSON strings, the
# subject null when None). `escape` (json.encoder.encode_basestring) escapes whatever is
# not plain ASCII; entities and subjects must be exactly str, not a subclass (subjects
# may be None).
def expand(
    id_prefix: str,
    first: int,
    key_prefix: bytes,
    entities: Sequence[str],
    subjects: Sequence[str | None],
    head: bytes,
    middle: bytes,
    tail: bytes,
    end: bytes,
    escape: Callable[[str], str],
    /,
) -> tuple[list[str], list[bytes], list[bytes]]: ...
