"""Per-record cost of `schemas.decode` (msgspec's path) against `schemas.codec.validate`
(pydantic's path, which was all of `decode` before), on records our writers produce.

    python -m bench.decode_speed [--records 20000] [--repeat 7]

Prints one JSON document: the best of `--repeat` interleaved CPU timings per model and
path, in µs per record.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from schemas import (
    AckStatus,
    EventType,
    HandledEntity,
    RetentionAck,
    RetentionEvent,
    ServiceRegistration,
    decode,
    encode,
    utc_now,
)
from schemas.codec import validate
from schemas.models import WireModel


def samples() -> dict[type[WireModel], bytes]:
    now = utc_now()
    return {
        RetentionEvent: encode(
            RetentionEvent(
                event_id=uuid.uuid4(),
                type=EventType.DELETE,
                entity_type="user",
                entity_id="1234567",
                policy="inactive-users",
                legal_basis="GDPR Art. 5(1)(e)",
                initiated_at=now,
                deadline=now,
                fields=["email", "name"],
                run_id=uuid.uuid4(),
                subject="user:1234567",
            )
        ),
        RetentionAck: encode(
            RetentionAck(
                event_id=uuid.uuid4(),
                service="billing",
                entity_type="user",
                entity_id="1234567",
                status=AckStatus.COMPLETED,
                records_affected=3,
                acknowledged_at=now,
            )
        ),
        ServiceRegistration: encode(
            ServiceRegistration(
                service="billing",
                handles=[HandledEntity(entity_type="user", actions=[EventType.DELETE])],
                sdk_version="0.1.0",
                registered_at=now,
            )
        ),
    }


def cpu_us(call: Callable[[], object], records: int) -> float:
    # CPU time, not wall time: other processes on a shared machine add less noise.
    start = time.process_time()
    for _ in range(records):
        call()
    return (time.process_time() - start) / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    result: dict[str, Any] = {}
    for model, raw in samples().items():
        assert decode(model, raw) == validate(model, raw)
        fast, slow = float("inf"), float("inf")
        for _ in range(args.repeat):  # interleaved, best of each
            fast = min(fast, cpu_us(lambda m=model, r=raw: decode(m, r), args.records))
            slow = min(slow, cpu_us(lambda m=model, r=raw: validate(m, r), args.records))
        result[model.__name__] = {
            "decode_us": round(fast, 2),
            "pydantic_us": round(slow, 2),
            "ratio": round(slow / fast, 2),
            "bytes": len(raw),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
