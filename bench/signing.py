"""Per-record vs per-batch (Merkle root + inclusion proof) Ed25519 signing: CPU per record.

    python -m bench.signing [--batch 5000] [--tree 128] [--rounds 20] [--value-bytes 400]
                            [--partitions 1] [--json]

Signs `--batch` records the way the relay does (one claim, a Merkle tree per `--tree`
records: `RETENTION_RELAY_SIGNATURE_BATCH`; `sign_in_place_us` is the relay's own call,
appending the headers to records that already carry one, `sign_per_batch_us` one
`sign_batch` per tree), then verifies each record on its own the
way a consumer does (a fresh `Verifier` per round, so the first record of each tree pays
the Ed25519 verify and the rest reuse what the verifier remembered). With `--partitions
N` the records are spread over N partitions by key, as the producer does, and verified
partition after partition, as a consumer reading all N gets them (the end-to-end bench's
topics have 6): a tree's records then arrive apart, not neighbour after neighbour. The per-record
scheme is what the tracker verifies for an ack sent alone (the SDK signs a batch's acks
as one tree). `hashing` says which implementation hashed the trees (`native`: the C
extension schemas/_merkle.c; `python`: the reference it falls back to); with `native`,
`sign_in_place_python_us` is the same signing through the reference, and
`verify_per_batch_python_us` the same verifying through the Python proof walk
(`Verifier._batch_valid`, where the native one is `schemas._merkle.Walker`), in the same run.
Reports the median over rounds, in microseconds per record, for both schemes; with
`--json`, one JSON object (settings, load average, results) to commit under
bench/results/signing/ so the docs can quote it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import signing
from schemas.partitioning import partitions_for
from schemas.signing import Signer, Verifier


@dataclass(slots=True)
class _Record:
    """What the relay signs: a record with its `event_id` header already."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@contextmanager
def python_hashing() -> Iterator[None]:
    """Sign with the pure-Python trees, and build verifiers that walk proofs in Python,
    while inside (the fallback where no C is built)."""
    chosen = signing._forest, signing._walker
    signing._forest, signing._walker = signing._forest_py, None
    try:
        yield
    finally:
        signing._forest, signing._walker = chosen


def _median_us(
    rounds: int, batch: int, work: Callable[[], object], setup: Callable[[], None] | None = None
) -> float:
    samples = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) / batch * 1e6)
    return statistics.median(samples)


def measure(
    batch: int, tree: int, rounds: int, value_bytes: int, partitions: int = 1
) -> dict[str, float]:
    signer = Signer(Ed25519PrivateKey.generate())
    records = [
        (f"user:{i}".encode(), os.urandom(value_bytes // 2).hex().encode()) for i in range(batch)
    ]
    per_record = [signer.sign_record(k, v) for k, v in records]

    def sign_trees() -> list[list[tuple[str, bytes]]]:
        out = []
        for start in range(0, len(records), tree):
            out.extend(signer.sign_batch(records[start : start + tree]))
        return out

    per_batch = sign_trees()
    outgoing: list[_Record] = []

    def fresh_records() -> None:
        outgoing[:] = [
            _Record(k, v, [("event_id", b"%036d" % i)]) for i, (k, v) in enumerate(records)
        ]

    def sign_in_place_us() -> float:
        return _median_us(
            rounds, batch, lambda: signer.sign_in_place(outgoing, tree), setup=fresh_records
        )

    # The order a consumer of every partition reads them in: by partition, then offset.
    where = partitions_for([k for k, _ in records], list(range(partitions)))
    order = sorted(range(batch), key=lambda i: where[i])

    def verify_all(headers: list[list[tuple[str, bytes]]]) -> None:
        verifier = Verifier([signer.public])
        for i in order:
            k, v = records[i]
            if not verifier.verify(k, v, headers[i]).valid:
                raise AssertionError("a record did not verify")

    result = {
        "sign_per_record_us": _median_us(
            rounds, batch, lambda: [signer.sign_record(k, v) for k, v in records]
        ),
        "sign_per_batch_us": _median_us(rounds, batch, sign_trees),
        "sign_in_place_us": sign_in_place_us(),
        "verify_per_record_us": _median_us(rounds, batch, lambda: verify_all(per_record)),
        "verify_per_batch_us": _median_us(rounds, batch, lambda: verify_all(per_batch)),
        "proof_header_bytes": float(len(per_batch[0][1][1])),
    }
    if signing.HASHING == "native":
        with python_hashing():
            result["sign_in_place_python_us"] = sign_in_place_us()
            result["verify_per_batch_python_us"] = _median_us(
                rounds, batch, lambda: verify_all(per_batch)
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--tree", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--value-bytes", type=int, default=400)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = measure(args.batch, args.tree, args.rounds, args.value_bytes, args.partitions)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        load = {"start": load_before, "end": os.getloadavg()}
        document = {"settings": settings, "hashing": signing.HASHING, "load": load}
        print(json.dumps({**document, "us_per_record": result}))
        return
    print(
        f"claim of {args.batch} records, trees of {args.tree}, {args.value_bytes}-byte values, "
        f"read from {args.partitions} partition(s), {signing.HASHING} hashing, µs per record:"
    )
    for name, value in result.items():
        print(f"  {name:24} {value:10.2f}")


if __name__ == "__main__":
    main()
