"""The optional C extensions (everything else is in pyproject.toml).

`schemas._merkle` hashes the batch signature scheme's Merkle trees and walks received
records' proofs (schemas/_merkle.c), and needs a C compiler, Python's headers and
OpenSSL's (libssl-dev on Debian). Where the build fails the install goes on without it
and `schemas.signing` uses its pure-Python code, which gives the same bytes and verdicts
(`schemas.signing.HASHING` says which one runs).
`coordinator.kafka._recordbatch` writes the relay's Kafka record batches
(coordinator/kafka/_recordbatch.c); without it the relay uses aiokafka's own builder,
same bytes (`coordinator.kafka.recordbatch.BUILDER`). `coordinator.outbox._expand`
makes the relay's ids, keys and values of an outbox batch (coordinator/outbox/_expand.c);
without it the Python of `coordinator.outbox.events.BatchEncoder`, same bytes
(`coordinator.outbox.events.EXPANSION`).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "schemas._merkle",
            sources=["schemas/_merkle.c"],
            libraries=["crypto"],
            optional=True,
        ),
        # The relay's records of one outbox batch (coordinator/outbox/events.py); no library.
        Extension(
            "coordinator.outbox._expand",
            sources=["coordinator/outbox/_expand.c"],
            optional=True,
        ),
        # Kafka record batches for the relay (coordinator/kafka/recordbatch.py); no library.
        Extension(
            "coordinator.kafka._recordbatch",
            sources=["coordinator/kafka/_recordbatch.c"],
            optional=True,
        ),
    ]
)
