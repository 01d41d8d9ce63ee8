"""Named, scoped API tokens (SPEC §10), kept as SHA-256 hashes in a YAML file.

The file (`RETENTION_API_TOKENS_FILE`) is `{tokens: [{name, scope, sha256}]}`; `sha256` is
the lower-case hex SHA-256 of the token's UTF-8 bytes, so the file holds nothing that
grants access by itself. A token's name is the actor recorded for what it does.

`TokenStore` re-reads the file when it changes (mtime or size), so adding or revoking a
token needs no restart. A file that stops parsing closes the API until it is fixed
rather than keeping tokens that may just have been revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from coordinator import CoordinatorError

__all__ = [
    "MAX_TOKENS_FILE_BYTES",
    "NewToken",
    "Principal",
    "Scope",
    "TokenEntry",
    "TokenStore",
    "TokensFile",
    "TokensFileError",
    "add_token",
    "hash_token",
    "load_tokens_file",
    "new_token",
]

MAX_TOKENS_FILE_BYTES = 1024 * 1024
"""A tokens file is a few lines per token; anything bigger is refused before parsing."""

TOKEN_PREFIX = "rtk_"  # noqa: S105 - a marker that lets secret scanners find leaked tokens


class Scope(StrEnum):
    """What a token may do; each scope includes the ones before it."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Scope).index(self)

    def includes(self, needed: Scope) -> bool:
        return self.rank >= needed.rank


TokenName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$", strict=True)
]


class TokenEntry(BaseModel):
    """One line of the tokens file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TokenName = Field(description="Who uses the token; recorded as the actor.")
    scope: Scope = Field(description="read, write or admin.")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256 of the token."
    )

    def line(self) -> str:
        """The entry as one YAML flow-mapping list item, to paste under `tokens:`."""
        # Quoted: a name like `yes` or `1234`, or an all-digit hash, is not a string in YAML.
        return f'  - {{name: "{self.name}", scope: {self.scope.value}, sha256: "{self.sha256}"}}'


class TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: list[TokenEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> TokensFile:
        for what, values in (
            ("name", [t.name for t in self.tokens]),
            ("sha256", [t.sha256 for t in self.tokens]),
        ):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                shown = ", ".join(repeated) if what == "name" else f"{len(repeated)} hashes"
                raise ValueError(f"each token needs its own {what}; repeated: {shown}")
        return self


class TokensFileError(CoordinatorError, ValueError):
    """The tokens file is missing, too big, or not `{tokens: [{name, scope, sha256}]}`."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the token's name and scope."""

    name: str
    scope: Scope

    def allows(self, needed: Scope) -> bool:
        return self.scope.includes(needed)


@dataclass(frozen=True, slots=True)
class NewToken:
    token: str
    entry: TokenEntry


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(name: str, scope: Scope) -> NewToken:
    """A fresh random token (256 bits) and its file entry.

    Raises:
        TokensFileError: the name is not allowed.
    """
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        entry = TokenEntry(name=name, scope=scope, sha256=hash_token(token))
    except ValidationError:
        raise TokensFileError(
            f"token name {name!r} not allowed: 1-100 of A-Z a-z 0-9 _ . @ -, "
            "starting with a letter or digit"
        ) from None
    return NewToken(token, entry)


def _parse(text: bytes, source: str) -> TokensFile:
    try:
        document = yaml.safe_load(text) or {}
        return TokensFile.model_validate(document)
    except yaml.YAMLError as exc:
        raise TokensFileError(f"{source}: not YAML ({type(exc).__name__})") from None
    except ValidationError as exc:
        # Without the offending input: a hash is harmless, a token pasted by mistake is not.
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise TokensFileError(
            f"{source}: expected {{tokens: [{{name, scope, sha256}}]}} ({where})"
        ) from None


def load_tokens_file(path: Path) -> TokensFile:
    """Read and validate a tokens file.

    Raises:
        TokensFileError: unreadable, over `MAX_TOKENS_FILE_BYTES`, or invalid.
    """
    try:
        with path.open("rb") as handle:
            text = handle.read(MAX_TOKENS_FILE_BYTES + 1)
    except OSError as exc:
        raise TokensFileError(
            f"{path}: cannot read ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(text) > MAX_TOKENS_FILE_BYTES:
        raise TokensFileError(f"{path}: over {MAX_TOKENS_FILE_BYTES} bytes")
    return _parse(text, str(path))


def add_token(path: Path, entry: TokenEntry) -> None:
    """Add `entry` to the tokens file at `path` (created, mode 0600, when missing).

    The file is rewritten whole and replaced atomically, so a reader never sees half
    of it; comments in it are not kept.

    Raises:
        TokensFileError: the file is invalid, or already has a token of this name.
    """
    current = load_tokens_file(path) if path.exists() else TokensFile()
    if any(t.name == entry.name for t in current.tokens):
        raise TokensFileError(f"{path} already has a token named {entry.name!r}")
    updated = TokensFile(tokens=[*current.tokens, entry])
    lines = [
        "# API tokens of `retention serve` (RETENTION_API_TOKENS_FILE): SHA-256 hashes only.",
        "# Add one with `retention tokens create NAME --scope read|write|admin`.",
        "tokens:",
        *(t.line() for t in updated.tokens),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class TokenStore:
    """The tokens of one file, re-read whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: tuple[TokenEntry, ...] = ()
        self._error: TokensFileError | None = None
        self.current()  # a file that is broken at start fails at start

    def current(self) -> tuple[TokenEntry, ...]:
        """The file's entries as of now.

        Raises:
            TokensFileError: the file cannot be read or does not validate.
        """
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise TokensFileError(
                f"{self.path}: cannot read ({exc.strerror or type(exc).__name__})"
            ) from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._entries, self._error = tuple(load_tokens_file(self.path).tokens), None
                except TokensFileError as exc:
                    self._entries, self._error = (), exc
                self._stamp = stamp
            if self._error is not None:
                raise self._error
            return self._entries

    def authenticate(self, token: str) -> Principal | None:
        """The principal whose hash matches `token`, or None.

        Raises:
            TokensFileError: the file cannot be read or does not validate.
        """
        return self.by_hash(hash_token(token))

    def by_hash(self, sha256: str) -> Principal | None:
        """The principal of the entry with this token hash, as the file says now, or None.

        The console's session keeps the hash, so a token revoked or re-scoped in the file
        takes effect on the next request of a signed-in browser too.

        Raises:
            TokensFileError: the file cannot be read or does not validate.
        """
        found: TokenEntry | None = None
        # Every entry is compared, in constant time, whether or not one matched already.
        for entry in self.current():
            if hmac.compare_digest(sha256, entry.sha256):
                found = entry
        return Principal(found.name, found.scope) if found is not None else None
