"""The policy condition language of SPEC §4, compiled to bound SQLAlchemy Core expressions.

A condition such as ``status = 'closed' AND resolved_at IS NOT NULL`` is tokenized and
parsed by our own small recursive-descent parser; none of its text ever reaches the
database as SQL. Columns are resolved against the policy's `Table`, so every identifier
SQLAlchemy renders is one the schema has, and every literal becomes a bind parameter
typed for its column. Anything outside the language is a `ConditionError` naming the
offending fragment and its offset. Grammar and rationale: ``docs/conditions.md``.
"""

from coordinator.policy.conditions._compiler import compile_condition
from coordinator.policy.conditions._errors import ConditionError
from coordinator.policy.conditions._syntax import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    BooleanColumn,
    ColumnRef,
    Comparison,
    InList,
    IsNull,
    Like,
    Node,
    Not,
    Or,
    Value,
    parse_condition,
    referenced_columns,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "And",
    "BooleanColumn",
    "ColumnRef",
    "Comparison",
    "ConditionError",
    "InList",
    "IsNull",
    "Like",
    "Node",
    "Not",
    "Or",
    "Value",
    "compile_condition",
    "parse_condition",
    "referenced_columns",
]
