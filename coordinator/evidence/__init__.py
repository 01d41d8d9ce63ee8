"""The coordinator's own evidence over time (SPEC §13): audit checkpoints and the heads
published to the audit topic, and pruning of what is past its retention."""

from __future__ import annotations

from schemas.signing import SignatureMode, SignatureSettings, Signer, Verifier, parse_public_key

__all__ = ["evidence_signer", "evidence_verifier"]


def evidence_signer(signatures: SignatureSettings) -> Signer | None:
    """The coordinator key that signs checkpoints (None when signing is off)."""
    return signatures.coordinator_signer()


def evidence_verifier(signatures: SignatureSettings) -> Verifier | None:
    """What checks checkpoints: the configured coordinator public keys, else the signing
    key's own; None when signing is off (checkpoints are then taken as stored)."""
    if signatures.mode is SignatureMode.OFF:
        return None
    keys = [parse_public_key(k) for k in signatures.coordinator_public_keys.split(",") if k.strip()]
    if not keys and signatures.signing_key_file is not None:
        keys = [Signer.from_file(signatures.signing_key_file).public]
    return Verifier(keys) if keys else None
