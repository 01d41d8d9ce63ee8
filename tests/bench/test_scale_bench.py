"""`make bench-scale` still measures what it says, at a CI size: every phase present in the
fixed schema, and the pruning removes exactly the seeded history. Numbers are not
checked here: speed is the bench's business."""

from __future__ import annotations

import pytest

from bench import results, scale


async def test_a_small_scale_run_tracks_both_batches_and_prunes_the_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCALE_ROWS", "3000")
    monkeypatch.setenv("SCALE_BATCH", "500")
    got = await scale.main()

    assert set(got["phases"]) == {name for name in results.PHASES if name.startswith("scale.")}
    for entry in got["phases"].values():
        assert set(entry) == {"ours", "seed", "limit", "ratio", "goal", "unit", "rows", "round"}
    assert got["phases"]["scale.track"]["rows"] == 500
    assert got["phases"]["scale.prune.audit"]["rows"] == 3000
    assert got["phases"]["scale.prune.ack_ledger"]["rows"] == 3000 * len(scale.SERVICES)
    assert got["phases"]["scale.prune.outbox"]["rows"] == 3000
    # The seeded month of each partitioned table goes by dropping its partition.
    dropped = got["partitions_dropped"]
    assert [len(dropped[n]) for n in ("prune.outbox", "prune.audit", "prune.ack_ledger")] == [
        1,
        1,
        1,
    ]
    own = got["own_bytes_per_event"]
    assert own["after_prune"] < own["before_prune"]
    assert got["phases"]["scale.prune.event_status"]["rows"] == 3000
    assert set(got["bytes_per_row"]) == {
        "retention_outbox_batches",
        "retention_event_status",
        "retention_expected_acks",
        "retention_ack_ledger",
        "audit_log",
    }
