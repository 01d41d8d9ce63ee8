"""Verification (SPEC §12): ask services, after they acked a deletion, how much of the
entity they still hold; a service that still holds some reopens the entity as
`resurrected` until a later delete ack.

`request` enqueues verify events (on demand, or a sample of completed deletions),
`answers` records what services answer, `queries` shows it. docs/verification.md.
"""
