"""The suppression list (SPEC §12): which entities were erased, published by HMAC on the
compacted `data.retention.erased` topic so that services can refuse to bring them back.

`record_erased` writes an entry in the transaction that erases the entity;
`SuppressionPublisher` sends unpublished entries and, once they expire, tombstones.
docs/suppression.md.
"""
