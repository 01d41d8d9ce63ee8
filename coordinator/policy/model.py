"""The policy file (SPEC §4): one pydantic model, and a loader that remembers YAML lines.

`load_policies(path)` parses with `yaml.SafeLoader`, validates every policy, and raises
one `PolicyFileError` listing *all* problems, each naming the policy, the YAML line and
what is wrong. Checks that need the live database (tables, columns, types, conditions)
live in `coordinator.policy.binding`.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from coordinator import CoordinatorError
from coordinator.policy import anonymizers
from coordinator.policy.conditions import ConditionError, parse_condition
from coordinator.policy.durations import DURATION_PATTERN, format_duration, parse_duration
from schemas import EventType
from schemas.models import MAX_NAME_CHARS, MAX_TEXT_CHARS
from schemas.signing import SigningKeyError, parse_public_key

__all__ = [
    "Action",
    "DeclaredService",
    "OnErasure",
    "Policy",
    "PolicyFile",
    "PolicyFileError",
    "PolicyIssue",
    "PolicySet",
    "Subject",
    "load_policies",
    "parse_policies",
    "resolve_hook",
]

MAX_FILE_BYTES = 1024 * 1024
"""A policy file larger than this is refused unread: real ones are a few KB."""
MAX_EXPANDED_NODES = 100_000
"""YAML nodes once every alias is expanded. A 1 KB "billion laughs" file expands to
hundreds of millions, and anything that walks it (validation, error messages) with it."""

_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
_HOOK = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class Action(StrEnum):
    DELETE = "delete"
    ANONYMIZE = "anonymize"
    ARCHIVE = "archive"


class OnErasure(StrEnum):
    """What an erasure request (SPEC §11) does to a policy's rows."""

    APPLY = "apply"
    EXEMPT = "exempt"


class Subject(BaseModel):
    """Whose personal data a row holds: rows belong to `entity_type:<column>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entity_type: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$", max_length=MAX_NAME_CHARS, description="The subject's type."
    )
    column: str = Field(pattern=_IDENTIFIER, description="Column holding the subject's id.")


def _duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, timedelta):
        return value
    raise ValueError(f"{value!r} is not a duration: write it as a string such as 90d or P90D")


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["90d", "P90D"]}),
]


class Policy(BaseModel):
    """One retention policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100, description="Unique name.")
    table: str = Field(pattern=_IDENTIFIER, description="Table the policy purges.")
    entity_type: str = Field(
        default="",
        pattern=r"^([A-Za-z0-9_.-]+)?$",
        # What events carry must fit the wire's bounds, or the relay could never publish.
        max_length=MAX_NAME_CHARS,
        description="What downstream services call one row (holds and events use it); "
        "defaults to the table name.",
    )
    id_column: str = Field(default="id", pattern=_IDENTIFIER)
    timestamp_column: str = Field(pattern=_IDENTIFIER)
    retention: Duration = Field(description="Rows older than this are due.")
    action: Action
    legal_basis: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    conditions: str | None = Field(
        default=None, description="Optional filter in the policy condition language."
    )
    batch_size: int = Field(default=5000, ge=1, le=50_000)
    anonymize: dict[str, str] = Field(
        default_factory=dict, description="column → strategy; required for action anonymize."
    )
    fan_out: bool = Field(default=False, description="Publish RetentionEvents downstream.")
    completion_deadline: Duration = Field(
        default=timedelta(days=30), description="How long services have to acknowledge."
    )
    verify_sample: float = Field(
        default=0,
        ge=0,
        le=1,
        description="Fraction of the entities whose delete events completed at least "
        "`verify_after` ago that services are asked to verify (SPEC §12); 0: none.",
    )
    verify_after: Duration = Field(
        default=timedelta(days=1),
        description="How long after completion an entity becomes eligible for a sampled verify.",
    )
    before_purge: str | None = Field(
        default=None,
        pattern=_HOOK,
        description='Async hook "package.module:function" called inside each batch.',
    )
    max_rows_per_run: int | None = Field(
        default=None, ge=1, description="Guard: refuse a run that would touch more rows."
    )
    max_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Guard: refuse a run that would touch a larger fraction of the table.",
    )
    schedule: str | None = Field(default=None, description="Cron expression for `serve`.")
    subject: Subject | None = Field(
        default=None,
        description="Whose personal data a row holds, for erasure requests and subject holds.",
    )
    on_erasure_request: OnErasure = Field(
        default=OnErasure.APPLY,
        description="apply: a request acts on the subject's rows; exempt: they stay.",
    )
    exemption_basis: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="Why the rows stay despite a request; required with exempt.",
    )
    restore_window: Duration | None = Field(
        default=None,
        description="Keep the rows this delete policy removes sealed in the vault this "
        "long, for `retention restore` (SPEC §12).",
    )

    @field_validator("anonymize", mode="before")
    @classmethod
    def _unquoted_null(cls, value: object) -> object:
        # `phone: null` is YAML for None; it can only mean the strategy named "null".
        if isinstance(value, dict):
            return {k: "null" if v is None else v for k, v in value.items()}
        return value

    @field_validator("anonymize")
    @classmethod
    def _known_strategies(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        for column, strategy in value.items():
            if not re.match(_IDENTIFIER, column):
                problems.append(f"{column!r} is not a column name")
            if strategy not in anonymizers.names():
                problems.append(
                    f"{column}: unknown strategy {strategy!r} "
                    f"(known: {', '.join(anonymizers.names())})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if self.action is Action.ANONYMIZE and not self.anonymize:
            raise ValueError("action anonymize needs an `anonymize:` map of column → strategy")
        if self.action is not Action.ANONYMIZE and self.anonymize:
            raise ValueError(
                f"`anonymize:` is only allowed with action anonymize, not {self.action}"
            )
        if self.restore_window is not None and self.action is not Action.DELETE:
            raise ValueError(
                f"restore_window is for action delete: {self.action} keeps the row "
                "(anonymize) or its sealed copy (archive) already"
            )
        if self.id_column in self.anonymize:
            raise ValueError(f"the id column {self.id_column!r} cannot be anonymized")
        if not self.entity_type:
            object.__setattr__(self, "entity_type", self.table)
        if self.on_erasure_request is OnErasure.EXEMPT and not self.exemption_basis:
            raise ValueError("on_erasure_request: exempt needs an `exemption_basis`")
        if self.on_erasure_request is OnErasure.APPLY and self.exemption_basis:
            raise ValueError("`exemption_basis` is only allowed with on_erasure_request: exempt")
        # Rows are their own subjects: the id column says it, another column would not.
        if (
            self.subject is not None
            and self.subject.entity_type == self.entity_type
            and self.subject.column != self.id_column
        ):
            raise ValueError(
                f"subject type {self.entity_type!r} is the policy's own entity type, "
                f"so its column must be the id column {self.id_column!r}"
            )
        return self

    def subject_of_rows(self, subject_types: frozenset[str]) -> Subject | None:
        """The mapping erasure requests and subject holds use, given every subject type
        the policy file declares: an explicit `subject:`, else the id column when this
        policy's entity type is one of them."""
        if self.subject is not None:
            return self.subject
        if self.entity_type in subject_types:
            return Subject(entity_type=self.entity_type, column=self.id_column)
        return None

    @property
    def event_type(self) -> str:
        """What downstream services are asked to do: archive moves the row away, so delete."""
        return "anonymize" if self.action is Action.ANONYMIZE else "delete"

    @property
    def fields(self) -> list[str]:
        return sorted(self.anonymize)


class DeclaredService(BaseModel):
    """One service that must acknowledge events (SPEC §9): the only source of who is expected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=255)
    owner: str = Field(min_length=1, description="Who answers for this service.")
    handles: dict[str, list[EventType]] = Field(
        min_length=1, description="entity type → actions (delete, anonymize) it acknowledges."
    )
    public_keys: list[str] = Field(
        default_factory=list,
        description="`ed25519:<base64>` keys its acks and registrations are signed with "
        "(several during a rotation).",
    )
    public_key_files: list[str] = Field(
        default_factory=list,
        description="Files holding one such key each; relative to the policy file's folder.",
    )
    completion_deadline: Duration | None = Field(
        default=None, description="Overrides the policy's deadline for this service."
    )

    @field_validator("handles")
    @classmethod
    def _actions(cls, value: dict[str, list[EventType]]) -> dict[str, list[EventType]]:
        for entity_type, actions in value.items():
            if not re.match(r"^[A-Za-z0-9_.-]+$", entity_type):
                raise ValueError(f"{entity_type!r} is not an entity type")
            if not actions:
                raise ValueError(f"{entity_type}: list at least one action")
            if EventType.VERIFY in actions:
                # Verification is asked of whoever handles the type; nobody is declared for it.
                raise ValueError(f"{entity_type}: list delete or anonymize, not verify")
        return value

    @field_validator("public_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_public_key(text)
        return value

    def handles_event(self, entity_type: str, action: str) -> bool:
        return any(a.value == action for a in self.handles.get(entity_type, ()))

    def pairs(self) -> frozenset[tuple[str, str]]:
        """(entity type, action) pairs it handles."""
        return frozenset((e, a.value) for e, actions in self.handles.items() for a in actions)


class PolicyFile(BaseModel):
    """The whole YAML document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: list[Policy] = Field(min_length=1)
    services: list[DeclaredService] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    policy: str | None
    line: int | None
    message: str
    kind: str = "policy"
    """What `policy` names: a policy, or a declared service."""

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        who = f"{self.kind} {self.policy!r}: " if self.policy else ""
        return f"{where}{who}{self.message}"


class PolicyFileError(CoordinatorError, ValueError):
    """Every problem found in a policy file (never just the first)."""

    def __init__(self, source: str, issues: Sequence[PolicyIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        lines = "\n".join(f"  {source}:{issue}" for issue in self.issues)
        super().__init__(f"{len(self.issues)} problem(s) in {source}:\n{lines}")


@dataclass(frozen=True)
class PolicySet:
    """Valid policies plus where each came from, so later checks can name YAML lines."""

    source: str
    policies: list[Policy]
    lines: dict[tuple[str, str], int] = field(default_factory=dict)
    services: list[DeclaredService] = field(default_factory=list)
    """Declared services, their `public_key_files` already read into `public_keys`."""

    def expected_services(self, entity_type: str, action: str) -> list[DeclaredService]:
        return [s for s in self.services if s.handles_event(entity_type, action)]

    def service(self, name: str) -> DeclaredService | None:
        return next((s for s in self.services if s.name == name), None)

    def line(self, policy: str, key: str = "") -> int | None:
        return self.lines.get((policy, key)) or self.lines.get((policy, ""))

    @property
    def subject_types(self) -> frozenset[str]:
        """Every type some policy names as `subject:` (what erasure requests accept)."""
        return frozenset(p.subject.entity_type for p in self.policies if p.subject is not None)

    def subject_of(self, policy: Policy) -> Subject | None:
        """Whose rows `policy`'s are, under this file's subject types (SPEC §11)."""
        return policy.subject_of_rows(self.subject_types)

    def subject_map(self) -> dict[str, list[tuple[Policy, Subject]]]:
        """Subject type → the policies (and columns) that hold its rows, in file order."""
        found: dict[str, list[tuple[Policy, Subject]]] = {t: [] for t in sorted(self.subject_types)}
        for policy in self.policies:
            subject = self.subject_of(policy)
            if subject is not None:
                found[subject.entity_type].append((policy, subject))
        return found

    def get(self, name: str) -> Policy:
        for policy in self.policies:
            if policy.name == name:
                return policy
        raise KeyError(name)


def _node_at(node: yaml.Node | None, path: Sequence[object]) -> yaml.Node | None:
    """The YAML node a pydantic error location points at (as deep as it exists)."""
    for step in path:
        if isinstance(node, yaml.MappingNode):
            child = next(
                (
                    (k, v)
                    for k, v in node.value
                    if isinstance(k, yaml.ScalarNode) and k.value == step
                ),
                None,
            )
            if child is None:
                return node
            node = child[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if step >= len(node.value):
                return node
            node = node.value[step]
        else:
            return node
    return node


def _key_line(mapping: yaml.Node | None, key: str) -> int | None:
    if isinstance(mapping, yaml.MappingNode):
        for k, _ in mapping.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return int(k.start_mark.line) + 1
    return None


def _expanded_nodes(root: yaml.Node) -> int | None:
    """How many nodes `root` has with aliases expanded, up to just past MAX_EXPANDED_NODES;
    None for an alias that contains itself. Each node is sized once (memo by identity)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    while pending:
        node, children_done = pending.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not children_done:
            if id(node) in open_nodes:
                return None
            open_nodes.add(id(node))
            pending.append((node, True))
            pending.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes.get(id(child), 0) for child in children)
        if sizes[id(node)] > MAX_EXPANDED_NODES:
            return sizes[id(node)]
    return sizes[id(root)]


def _duplicate_keys(root: yaml.Node, issues: list[PolicyIssue], policy: str | None) -> None:
    # Each node once, without recursion: YAML aliases share nodes, so a walk that follows
    # them re-visits a "billion laughs" document 9**9 times, and deep nesting overflows.
    pending, visited = [root], set()
    while pending:
        node = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        issues.append(
                            PolicyIssue(
                                policy, key.start_mark.line + 1, f"duplicate key {key.value!r}"
                            )
                        )
                    seen.add(key.value)
                pending.append(value)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)


def _refuse_alias_bombs(root: yaml.Node, source: str) -> None:
    expanded = _expanded_nodes(root)
    if expanded is None:
        problem = "a YAML alias refers to a node that contains it"
    elif expanded > MAX_EXPANDED_NODES:
        problem = (
            f"YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes "
            "(an alias bomb?): write the values out"
        )
    else:
        return
    raise PolicyFileError(source, [PolicyIssue(None, None, problem)])


def parse_policies(
    text: str, source: str = "<policies>", *, hook_modules: Sequence[str] = ()
) -> PolicySet:
    """Parse and validate a policy document; raise PolicyFileError with every problem.

    `hook_modules`: the modules (with their submodules) a `before_purge` may name; any
    other is refused before it is imported.
    """
    if len(text) > MAX_FILE_BYTES:
        raise PolicyFileError(
            source, [PolicyIssue(None, None, f"larger than {MAX_FILE_BYTES} bytes")]
        )
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _refuse_alias_bombs(root, source)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PolicyFileError(source, [PolicyIssue(None, line, f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise PolicyFileError(
            source, [PolicyIssue(None, None, "not a policy file: YAML nested too deeply")]
        ) from None
    finally:
        loader.dispose()

    issues: list[PolicyIssue] = []
    if root is not None:
        _duplicate_keys(root, issues, None)
    policies_node = _node_at(root, ["policies"])
    items = data.get("policies") if isinstance(data, dict) else None
    extra = sorted(set(data) - {"policies", "services"}) if isinstance(data, dict) else []
    if not isinstance(items, list) or not items or extra:
        line = int(root.start_mark.line) + 1 if root is not None else None
        problem = (
            f"unknown top-level key(s) {', '.join(map(str, extra))}"
            if extra and isinstance(items, list) and items
            else "the file must be a mapping with a non-empty `policies:` list"
        )
        raise PolicyFileError(source, [*issues, PolicyIssue(None, line, problem)])

    # Each policy is validated on its own so one bad policy never hides another's errors.
    policies: list[Policy] = []
    lines: dict[tuple[str, str], int] = {}
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        node = _node_at(policies_node, [index])
        start = int(node.start_mark.line) + 1 if node is not None else None
        label = str(item["name"]) if isinstance(item, dict) and "name" in item else f"#{index + 1}"
        key_lines: dict[str, int] = {}
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                key_lines[str(key.value)] = int(value.start_mark.line) + 1
        try:
            policy = Policy.model_validate(item)
        except ValidationError as exc:
            issues.extend(_issues(label, start, node, exc))
            continue
        if policy.name in seen:
            issues.append(
                PolicyIssue(
                    policy.name,
                    key_lines.get("name", start),
                    f"name already used by the policy at line {seen[policy.name]}",
                )
            )
            continue
        seen[policy.name] = start or 0
        if policy.conditions is not None:
            # Syntax now; columns and types once the table is known (policy_binding).
            try:
                parse_condition(policy.conditions)
            except ConditionError as condition_error:
                issues.append(
                    PolicyIssue(
                        policy.name,
                        key_lines.get("conditions", start),
                        f"conditions: {condition_error}",
                    )
                )
        if policy.before_purge is not None:
            try:
                resolve_hook(policy.before_purge, allowed=hook_modules)
            except ValueError as hook_error:
                issues.append(
                    PolicyIssue(policy.name, key_lines.get("before_purge", start), str(hook_error))
                )
        if start is not None:
            lines[(policy.name, "")] = start
        lines.update({(policy.name, key): line for key, line in key_lines.items()})
        policies.append(policy)
    services = _services(
        data.get("services") if isinstance(data, dict) else None,
        _node_at(root, ["services"]),
        source,
        issues,
    )
    for policy in policies:
        if (
            services is not None
            and policy.fan_out
            and not any(s.handles_event(policy.entity_type, policy.event_type) for s in services)
        ):
            issues.append(
                PolicyIssue(
                    policy.name,
                    lines.get((policy.name, "fan_out"), lines.get((policy.name, ""))),
                    f"fan_out: no declared service handles {policy.event_type} of "
                    f"{policy.entity_type!r}; declare one under `services:` or set "
                    "fan_out: false (`retention services suggest` drafts the block)",
                )
            )
    subject_types = frozenset(p.subject.entity_type for p in policies if p.subject is not None)
    for policy in policies:
        if policy.on_erasure_request is OnErasure.EXEMPT and (
            policy.subject_of_rows(subject_types) is None
        ):
            issues.append(
                PolicyIssue(
                    policy.name,
                    lines.get((policy.name, "on_erasure_request")),
                    "on_erasure_request: exempt needs a `subject:` (whose rows are exempt?)",
                )
            )
    if issues:
        raise PolicyFileError(source, sorted(issues, key=lambda i: i.line or 0))
    return PolicySet(source=source, policies=policies, lines=lines, services=services or [])


def _services(
    items: object, node: yaml.Node | None, source: str, issues: list[PolicyIssue]
) -> list[DeclaredService] | None:
    """The declared services (None when they could not all be read: skip later checks)."""
    if items is None:
        return []
    if not isinstance(items, list):
        line = int(node.start_mark.line) + 1 if node is not None else None
        issues.append(PolicyIssue(None, line, "`services:` must be a list"))
        return None
    folder = Path(source).parent
    services: list[DeclaredService] = []
    seen: dict[str, int] = {}
    complete = True
    for index, item in enumerate(items):
        item_node = _node_at(node, [index])
        start = int(item_node.start_mark.line) + 1 if item_node is not None else None
        label = str(item["name"]) if isinstance(item, dict) and "name" in item else f"#{index + 1}"
        try:
            service = DeclaredService.model_validate(item)
        except ValidationError as exc:
            issues.extend(
                PolicyIssue(i.policy, i.line, i.message, "service")
                for i in _issues(label, start, item_node, exc)
            )
            complete = False
            continue
        if service.name in seen:
            issues.append(
                PolicyIssue(
                    service.name,
                    start,
                    f"name already used by the service at line {seen[service.name]}",
                    "service",
                )
            )
            continue
        seen[service.name] = start or 0
        keys = list(service.public_keys)
        for name in service.public_key_files:
            path = folder / name
            try:
                text = path.read_text(encoding="ascii").strip()
                parse_public_key(text)
            except (OSError, UnicodeDecodeError, SigningKeyError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                key_line = _node_at(item_node, ["public_key_files"])
                line = int(key_line.start_mark.line) + 1 if key_line is not None else start
                issues.append(
                    PolicyIssue(service.name, line, f"public key file {name}: {reason}", "service")
                )
                complete = False
                continue
            keys.append(text)
        services.append(service.model_copy(update={"public_keys": keys}))
    return services if complete else None


def _issues(
    label: str, start: int | None, node: yaml.Node | None, exc: ValidationError
) -> list[PolicyIssue]:
    issues = []
    for error in exc.errors():
        loc = list(error["loc"])
        field_path = ".".join(str(part) for part in loc)
        target = _node_at(node, loc)
        line = int(target.start_mark.line) + 1 if target is not None else start
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            line = start
            message = f"{field_path}: required field is missing"
        elif error["type"] == "extra_forbidden":
            line = _key_line(node, str(loc[-1])) or line
            message = f"{field_path}: unknown field"
        elif error["type"] == "string_pattern_mismatch":
            message = f"{field_path}: {error['input']!r} is not allowed here ({message})"
        elif field_path:
            message = f"{field_path}: {message}"
        issues.append(PolicyIssue(label, line, message))
    return issues


def load_policies(path: Path | str, *, hook_modules: Sequence[str] = ()) -> PolicySet:
    """Read and validate a policy file (see `parse_policies`); its hooks may also live
    in the Python package the file itself is in."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            problem = f"larger than {MAX_FILE_BYTES} bytes"
            raise PolicyFileError(str(path), [PolicyIssue(None, None, problem)])
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError(str(path), [PolicyIssue(None, None, f"cannot read: {exc}")]) from None
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8: {exc.reason} at byte {exc.start}"
        raise PolicyFileError(str(path), [PolicyIssue(None, None, problem)]) from None
    own = _package_of(path)
    return parse_policies(text, str(path), hook_modules=[*hook_modules, *([own] if own else [])])


def _package_of(path: Path) -> str | None:
    """`demo` for demo/policies.yaml when demo/ has an `__init__.py`; else None."""
    parts: list[str] = []
    directory = path.resolve().parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    return ".".join(parts) or None


BeforePurge = Callable[..., Awaitable[None]]


def resolve_hook(reference: str, *, allowed: Sequence[str] | None = None) -> BeforePurge:
    """Import `package.module:function`; it must be an async function.

    With `allowed`, a module outside those (and their submodules) is refused unimported:
    importing runs its code. `None` is for references `parse_policies` already checked.
    """
    module_name, _, attribute = reference.partition(":")
    if allowed is not None and not any(
        module_name == prefix or module_name.startswith(f"{prefix}.") for prefix in allowed
    ):
        where = ", ".join(repr(prefix) for prefix in allowed) or "none"
        raise ValueError(
            f"before_purge: module {module_name!r} is not allowed (allowed: {where}); "
            f"add it to RETENTION_HOOK_MODULES (comma-separated), or put the hook in the "
            "Python package that holds the policy file"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"before_purge: cannot import {module_name!r}: {exc}") from None
    hook: Any = getattr(module, attribute, None)
    if hook is None:
        raise ValueError(f"before_purge: {module_name!r} has no attribute {attribute!r}")
    if not inspect.iscoroutinefunction(hook):
        raise ValueError(f"before_purge: {reference!r} must be an async function")
    return hook  # type: ignore[no-any-return]
