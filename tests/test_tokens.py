"""Tokens file and `retention tokens create` (SPEC §10): hashes only, names, scopes."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.api.tokens import (
    MAX_TOKENS_FILE_BYTES,
    Principal,
    Scope,
    TokensFileError,
    TokenStore,
    load_tokens_file,
    new_token,
)
from coordinator.cli import app

runner = CliRunner()


def test_scopes_include_the_lower_ones() -> None:
    assert Principal("a", Scope.ADMIN).allows(Scope.WRITE)
    assert Principal("a", Scope.WRITE).allows(Scope.READ)
    assert not Principal("a", Scope.WRITE).allows(Scope.ADMIN)
    assert not Principal("a", Scope.READ).allows(Scope.WRITE)


def test_create_prints_the_token_once_and_a_line_that_loads(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tokens", "create", "alice", "--scope", "write"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    [token] = [line for line in lines if line.startswith("rtk_")]
    [entry_line] = [line for line in lines if line.lstrip().startswith("- {")]
    assert result.stdout.count(token) == 1
    assert token not in entry_line
    # The line, pasted under `tokens:`, is a valid file whose hash is SPEC's.
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n{entry_line}\n")
    [entry] = load_tokens_file(path).tokens
    assert (entry.name, entry.scope) == ("alice", Scope.WRITE)
    assert entry.sha256 == hashlib.sha256(token.encode("utf-8")).hexdigest()
    assert TokenStore(path).authenticate(token) == Principal("alice", Scope.WRITE)
    assert TokenStore(path).authenticate(token + "x") is None


def test_create_into_a_file_adds_and_refuses_a_repeated_name(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "tokens.yaml"
    made = {}
    for name, scope in (("reader", "read"), ("ops", "admin")):
        result = runner.invoke(
            app, ["tokens", "create", name, "--scope", scope, "--file", str(path), "--json"]
        )
        assert result.exit_code == 0, result.output
        made[name] = json.loads(result.stdout)["token"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert all(token not in path.read_text() for token in made.values())
    store = TokenStore(path)
    assert store.authenticate(made["reader"]) == Principal("reader", Scope.READ)
    assert store.authenticate(made["ops"]) == Principal("ops", Scope.ADMIN)
    again = runner.invoke(app, ["tokens", "create", "ops", "--scope", "read", "--file", str(path)])
    assert again.exit_code == 2
    assert "already has a token named 'ops'" in again.output
    assert [t.name for t in load_tokens_file(path).tokens] == ["reader", "ops"]


@pytest.mark.parametrize(
    "args",
    [["bad name", "--scope", "read"], ["x", "--scope", "root"], ["x"]],
    ids=["name", "scope", "no-scope"],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    assert runner.invoke(app, ["tokens", "create", *args]).exit_code == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens: [{name: a, scope: root, sha256: " + "0" * 64 + "}]", "tokens.0.scope"),
        ("tokens: [{name: a, scope: read, sha256: ABC}]", "tokens.0.sha256"),
        ("tokens: [{name: a, scope: read, sha256: " + "0" * 64 + ", x: 1}]", "tokens.0.x"),
        (
            "tokens:\n"
            + "".join(f"  - {{name: a, scope: read, sha256: {c * 64}}}\n" for c in "ab"),
            "repeated: a",
        ),
        ("[1, 2]", "expected {tokens"),
        ("tokens: [", "not YAML"),
    ],
    ids=["scope", "hash", "extra", "repeated-name", "not-a-mapping", "not-yaml"],
)
def test_invalid_files_are_refused_naming_the_problem_not_the_input(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(TokensFileError, match=message) as raised:
        load_tokens_file(path)
    assert "ABC" not in str(raised.value)  # a token pasted as the hash is not echoed
    with pytest.raises(TokensFileError):
        TokenStore(path)  # a service fails at start


def test_an_oversized_or_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    with pytest.raises(TokensFileError, match="cannot read"):
        TokenStore(path)
    path.write_bytes(b"#" * (MAX_TOKENS_FILE_BYTES + 1))
    with pytest.raises(TokensFileError, match="over"):
        load_tokens_file(path)


@pytest.mark.parametrize("name", ["yes", "1234", "null", "0x1f"])
def test_names_yaml_would_read_as_other_types_survive_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / "tokens.yaml"
    result = runner.invoke(app, ["tokens", "create", name, "--scope", "read", "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert [t.name for t in load_tokens_file(path).tokens] == [name]


def test_new_tokens_are_random_and_long() -> None:
    tokens = {new_token("a", Scope.READ).token for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 40 for t in tokens)
