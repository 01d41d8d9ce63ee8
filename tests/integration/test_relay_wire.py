"""What the relay stores on the real broker, record by record: the value `schemas.encode`
writes, the key, and SPEC §9's headers in order (proof format v2: `event_id`,
`retention-batch`; v1: `event_id`, `retention-signature`, `retention-proof`; a signature
tree of one: `event_id`, `retention-signature`), every record verifying on its own.
Entity ids that JSON escapes and non-ASCII ones go through the escaping path, the others
through the C expansion where built (docs/relay.md)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings
from schemas import KafkaSettings, RetentionEvent, decode, encode
from schemas.signing import (
    BATCH_HEADER,
    PROOF_HEADER,
    SIGNATURE_HEADER,
    ProofFormat,
    SignatureSettings,
    Verdict,
    format_public_key,
    generate_key_files,
    load_private_key,
)
from tests import spec_v2
from tests.outbox import insert_rows, outbox_rows, read_records

# 257 events in one batch and one chunk: trees of 128, 128 and one.
AWKWARD = ['say "hi"', "back\\slash", "tab\there", "Zoë 東京 🙂", "</script>"]


@pytest.mark.parametrize("proof_format", list(ProofFormat))
async def test_every_record_is_the_encoded_event_with_its_headers_and_verifies(
    engine: AsyncEngine, topics: KafkaSettings, tmp_path: Path, proof_format: ProofFormat
) -> None:
    key_file, _ = generate_key_files(tmp_path, "coordinator")
    public = format_public_key(load_private_key(key_file).public_key())
    ids = [AWKWARD[i % len(AWKWARD)] + str(i) if i % 7 == 0 else str(9_000 + i) for i in range(257)]
    rows = outbox_rows(257, entity_ids=ids)
    await insert_rows(engine, rows)
    signing = SignatureSettings(signing_key_file=key_file)
    settings = RelaySettings(
        batch_size=1000, idle_sleep_s=0.05, backoff_initial_s=0.05, proof_format=proof_format
    )
    async with OutboxRelay(engine, topics, settings=settings, signatures=signing) as relay:
        assert await relay.drain(timeout_s=60) == len(rows)

    records = await read_records(topics, topics.topics.events, expected=len(rows))
    assert len(records) == len(rows)
    verifier = SignatureSettings(coordinator_public_keys=public).coordinator_verifier()
    by_id = {str(row["event_id"]): row for row in rows}
    sent_at = {str(row["event_id"]): at for at, row in enumerate(rows)}
    trees: dict[bytes, list[tuple[int, bytes, bytes, bytes]]] = defaultdict(list)
    alone = 0
    for record in records:
        event = decode(RetentionEvent, record.value)
        row = by_id[str(event.event_id)]
        assert record.value == encode(event)
        assert event.entity_id == row["entity_id"]
        assert record.key == f"user:{row['entity_id']}".encode()
        names = [name for name, _ in record.headers]
        if names == ["event_id", SIGNATURE_HEADER]:
            alone += 1
        elif proof_format is ProofFormat.V1:
            assert names == ["event_id", SIGNATURE_HEADER, PROOF_HEADER]
        else:
            assert names == ["event_id", BATCH_HEADER]
            # Trees of 128: seven steps of 16 bytes.
            assert len(record.headers[1][1]) == 94 + 7 * 16
            batch = record.headers[1][1]
            trees[batch[73:89]].append(
                (sent_at[str(event.event_id)], record.key, record.value, batch)
            )
        assert dict(record.headers)["event_id"] == str(event.event_id).encode()
        checked = verifier.verify(record.key, record.value, record.headers)
        assert checked.verdict is Verdict.VALID
    assert alone == 1
    if proof_format is ProofFormat.V2:
        # The bytes on the wire are those of the trees docs/protocol.md describes, built
        # by `tests.spec_v2` from the records in the order the relay sent them.
        private = load_private_key(key_file)
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        kid = hashlib.sha256(raw).digest()[:8]
        assert sorted(len(tree) for tree in trees.values()) == [128, 128]
        for salt, tree in trees.items():
            tree.sort()
            built = spec_v2.tree_values(private.sign, kid, salt, [(k, v) for _, k, v, _ in tree])
            assert [batch for *_, batch in tree] == built
