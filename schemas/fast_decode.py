"""The fast path of `schemas.decode`: msgspec parses and checks, pydantic is not called.

Each wire model gets a msgspec mirror built from its own pydantic fields (names, types,
bounds, defaults), so the model stays the one definition. The mirror is stricter than the
model on purpose: it refuses unknown fields, and accepts timestamps only in the RFC 3339
form our writers use (`2026-01-01T00:00:00.123456Z`, 0–6 fraction digits, `Z` or
`±HH:MM`). Whatever it refuses goes to pydantic (`schemas.codec`), which accepts or
names the problem exactly as before; whatever it accepts, pydantic accepts too and
yields an equal model (tests/test_decode_properties.py checks that on every input it
generates and on the fuzz corpus).

A record the mirror accepts becomes the pydantic model without validating again, in the
same state a validation would leave it: the same values, the same `model_fields_set`.
"""

from __future__ import annotations

import enum
import operator
import re
import types
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import annotated_types
import msgspec
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo

from schemas.models import SCHEMA_VERSION, STORABLE_TEXT, WireModel

__all__ = ["FastDecoder", "fast_decoder"]

M = TypeVar("M", bound=WireModel)

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
"""ASCII digits only: Python's `\\d` would also match other scripts' digits."""

_NUL = b"\\u0000"
"""The only way a NUL gets into a decoded string: JSON can't carry it unescaped (a raw
control character is a syntax error), and `\\u0000` has no letters to vary in case. A
record containing these six bytes anywhere, even as an escaped backslash followed by
`u0000`, takes pydantic's path."""

Convert = Callable[[Any], Any]


class _Refused(ValueError):
    """The mirror accepted the syntax but a value is out of the model's bounds."""


_REMEMBERED = 1024
"""Timestamp texts remembered per field: the events of one purge batch share their
`initiated_at` and `deadline`, so a batch converts each once."""


def _timestamp(ge: datetime, lt: datetime) -> Convert:
    known: dict[str, datetime] = {}

    def convert(text: str, shaped: Callable[[str], object] = _RFC3339.fullmatch) -> datetime:
        # A datetime is immutable: events may share one.
        value = known.get(text)
        if value is not None:
            return value
        if shaped(text) is None:
            raise _Refused(text)
        value = datetime.fromisoformat(text)
        if not ge <= value < lt:
            raise _Refused(text)
        if len(known) >= _REMEMBERED:
            known.clear()
        value = known[text] = value.astimezone(UTC)
        return value

    return convert


def _meta(metadata: list[Any]) -> dict[str, Any]:
    """msgspec constraints from pydantic's field metadata (the kinds our models use)."""
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, annotated_types.MinLen):
            found["min_length"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            found["max_length"] = item.max_length
        elif isinstance(item, annotated_types.Ge):
            found["ge"] = item.ge
        elif isinstance(item, annotated_types.Le):
            found["le"] = item.le
        elif isinstance(item, annotated_types.Lt):
            found["lt"] = item.lt
        elif getattr(item, "pattern", None) == STORABLE_TEXT:
            # Checked once per record instead (`_NUL`): a regex per string costs more
            # than the rest of the decoding.
            continue
        elif getattr(item, "pattern", None) is not None:
            found["pattern"] = item.pattern
    return found


def _bounds(metadata: list[Any]) -> tuple[datetime, datetime]:
    meta = _meta(metadata)
    return meta["ge"], meta["lt"]


def _compose(inner: Convert | None, outer: Callable[[Any, Convert], Any]) -> Convert | None:
    if inner is None:
        return None
    return lambda value: outer(value, inner)


def _mirror(annotation: Any, metadata: list[Any]) -> tuple[Any, Convert | None]:
    """The msgspec type for one pydantic type, and how to turn its value into the model's."""
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        inner = [m for info in extra if isinstance(info, FieldInfo) for m in info.metadata]
        return _mirror(base, [*metadata, *inner])
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(annotation) if a is not type(None)]
        if len(arms) != 1:
            raise TypeError(f"no fast mirror for {annotation}")
        hint, convert = _mirror(arms[0], metadata)
        return hint | None, _compose(
            convert, lambda value, inner: None if value is None else inner(value)
        )
    if origin is list:
        (item,) = get_args(annotation)
        hint, convert = _mirror(item, [])
        constraints = _meta(metadata)
        # Types built at run time: the subscriptions are values here, not annotations.
        listed: Any = list.__class_getitem__(hint)
        if constraints:
            listed = Annotated.__class_getitem__((listed, msgspec.Meta(**constraints)))  # type: ignore[attr-defined]
        return listed, _compose(convert, lambda value, inner: [inner(v) for v in value])
    if annotation is AwareDatetime:
        ge, lt = _bounds(metadata)
        return str, _timestamp(ge, lt)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        nested = _Mirror(annotation)
        return nested.struct, nested.build
    if annotation in (str, int) or annotation is uuid.UUID:
        constraints = _meta(metadata)
        return (
            Annotated[annotation, msgspec.Meta(**constraints)] if constraints else annotation
        ), None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation, None
    raise TypeError(f"no fast mirror for {annotation}")


class _Mirror:
    """A model's msgspec struct and the function that turns one into the model."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        whole: list[tuple[str, Any]] = []
        self.converts: list[tuple[str, Convert]] = []
        self.optional: list[tuple[str, Callable[[], Any]]] = []
        required: list[str] = []
        for name, info in model.model_fields.items():
            metadata = list(info.metadata)
            if name == "schema_version":
                # WireModel's validator: no major version newer than ours.
                metadata.append(annotated_types.Le(SCHEMA_VERSION))
            hint, convert = _mirror(info.annotation, metadata)
            if convert is not None:
                self.converts.append((name, convert))
            whole.append((name, hint))
            if info.is_required():
                required.append(name)
                fields.append((name, hint))
            else:
                # UNSET tells a field the record left out from one it set: pydantic's
                # `model_fields_set` records the same difference.
                fields.append((name, hint | msgspec.UnsetType, msgspec.UNSET))
                self.optional.append((name, _default(info)))
        self.required = frozenset(required)
        self.every = frozenset(model.model_fields)
        self.unset = (msgspec.UNSET,) * len(self.every)
        # kw_only: the model's field order, whatever has a default (`asdict` keeps it).
        self.struct = msgspec.defstruct(
            f"_Fast{model.__name__}", fields, kw_only=True, forbid_unknown_fields=True
        )
        self.whole = msgspec.defstruct(
            f"_Whole{model.__name__}", whole, kw_only=True, forbid_unknown_fields=True
        )
        """The same fields, every one required: what our writers send. A record of this
        shape needs no look for left-out fields (`build_whole`)."""

    def build(self, struct: Any) -> BaseModel:
        found = msgspec.structs.asdict(struct)
        for name, convert in self.converts:
            value = found[name]
            if value is not msgspec.UNSET:
                found[name] = convert(value)
        # Identity, not `in`: that would call UUID's __eq__ (Python) on each value.
        if not any(map(operator.is_, found.values(), self.unset)):
            # Our writers send every field: no defaults to fill in.
            given = set(self.every)
        else:
            given = set(self.required)
            for name, default in self.optional:
                if found[name] is msgspec.UNSET:
                    found[name] = default()
                else:
                    given.add(name)
        return self._made(found, given)

    def build_whole(self, struct: Any) -> BaseModel:
        """`build` of a `whole` struct: every field was given, none is UNSET."""
        found = msgspec.structs.asdict(struct)
        for name, convert in self.converts:
            found[name] = convert(found[name])
        return self._made(found, set(self.every))

    def _made(
        self,
        found: dict[str, Any],
        given: set[str],
        put: Callable[[object, str, Any], None] = object.__setattr__,
    ) -> BaseModel:
        # What `model_construct` does, without its per-call introspection: the instance
        # a validation would have produced (extra="ignore": no extras, no private state).
        made = self.model.__new__(self.model)
        put(made, "__dict__", found)
        put(made, "__pydantic_fields_set__", given)
        put(made, "__pydantic_extra__", None)
        put(made, "__pydantic_private__", None)
        return made


def _default(info: FieldInfo) -> Callable[[], Any]:
    if info.default_factory is not None:
        factory = info.default_factory
        return lambda: factory()  # type: ignore[call-arg]
    default = info.default
    return lambda: default


class FastDecoder:
    """Decode one wire model the fast way; `None` means: ask pydantic."""

    def __init__(self, model: type[WireModel]) -> None:
        self._mirror = _Mirror(model)
        self._decoder = msgspec.json.Decoder(self._mirror.struct)
        self._whole = msgspec.json.Decoder(self._mirror.whole).decode
        self._build_whole = self._mirror.build_whole

    def __call__(self, raw: bytes) -> Any:
        if _NUL in raw:
            return None
        try:
            # Our writers send every field: tried first, it spares `build` its look for
            # left-out ones (~0.5 µs a record).
            return self._build_whole(self._whole(raw))
        except msgspec.ValidationError:
            pass  # a field left out, or a value refused: the struct with defaults says
        except (msgspec.DecodeError, ValueError):
            return None  # not JSON, or a value the conversions refuse: so would `build`
        try:
            return self._mirror.build(self._decoder.decode(raw))
        except (msgspec.DecodeError, ValueError):
            # DecodeError covers msgspec's ValidationError; ValueError covers invalid
            # UTF-8 and what the conversions refuse.
            return None


_DECODERS: dict[type[WireModel], FastDecoder] = {}


def fast_decoder(model: type[M]) -> Callable[[bytes], M | None]:
    """The fast decoder of `model`, built once per model."""
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = FastDecoder(model)
    return decoder
