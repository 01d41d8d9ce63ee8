"""The private brokers' cluster ids must pass the storage tool's argument parser."""

import base64

from tests.faults.private_kafka import _cluster_id


def test_cluster_ids_never_start_with_a_dash_and_decode_to_16_bytes() -> None:
    # A leading "-" comes up once in 64 draws; 4,000 draws miss it with odds near 1e-28.
    ids = [_cluster_id() for _ in range(4000)]
    assert not [i for i in ids if i.startswith("-")]
    assert {len(base64.urlsafe_b64decode(i + "==")) for i in ids} == {16}
    assert len(set(ids)) == len(ids)
