"""Completion tracking: who must acknowledge each event, what they said, and the proof.

See docs/tracking.md for the design; `coordinator.tracking.tracker` runs it against Kafka.
"""
