"""A re-send's `Outcome` counts every id but lists only the first `keep`: a run's re-send
(or a re-drive) can send millions, which neither the process nor a response should hold."""

from __future__ import annotations

import uuid

from coordinator.operations.republish import SAMPLE, Outcome


def _ids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


def test_an_outcome_lists_the_first_ids_and_counts_them_all() -> None:
    sent, held = _ids(5), _ids(4)
    outcome = Outcome(keep=3)
    outcome.add(sent[:2], held[:1])
    outcome.add(sent[2:], held[1:])
    assert (outcome.sent, outcome.held) == (sent[:3], held[:3])
    assert outcome.as_dict() == {
        "sent": [str(i) for i in sent[:3]],
        "sent_total": 5,
        "held": [str(i) for i in held[:3]],
        "held_total": 4,
        "truncated": True,
    }


def test_an_outcome_within_its_bound_is_not_truncated() -> None:
    sent = _ids(SAMPLE)
    outcome = Outcome()
    outcome.add(sent, [])
    assert (outcome.sent, outcome.sent_total, outcome.truncated) == (sent, SAMPLE, False)
    outcome.add(_ids(1), [])
    assert (outcome.sent, outcome.sent_total, outcome.truncated) == (sent, SAMPLE + 1, True)


def test_an_unbounded_outcome_keeps_every_id() -> None:
    # For callers whose selection is bounded already (one DLQ chunk, one backfill page):
    # a re-drive maps each held id back to its dead letters.
    sent, held = _ids(SAMPLE + 5), _ids(SAMPLE + 1)
    outcome = Outcome(keep=None)
    outcome.add(sent, held)
    assert (outcome.sent, outcome.held, outcome.truncated) == (sent, held, False)
