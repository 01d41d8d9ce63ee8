"""The optional C extension `schemas._merkle` (everything else is in pyproject.toml).

It hashes the batch signature scheme's Merkle trees and walks received records' proofs
(schemas/_merkle.c), and needs a C compiler, Python's headers and OpenSSL's (libssl-dev
on Debian). Where the build fails the install goes on without it and `schemas.signing`
uses its pure-Python code, which gives the same bytes and verdicts
(`schemas.signing.HASHING` says which one runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "schemas._merkle",
            sources=["schemas/_merkle.c"],
            libraries=["crypto"],
            optional=True,
        )
    ]
)
