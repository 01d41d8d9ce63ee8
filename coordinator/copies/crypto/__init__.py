"""Envelope encryption of archived rows: per-subject data keys, wrapped by a KEK (SPEC §12)."""
